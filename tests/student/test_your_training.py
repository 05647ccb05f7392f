"""Checks of what training uses: AdamW, the embedding classifier, and LoRA where the course has it."""

import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optimizer import AdamW
from support import course

HAS_LORA = importlib.util.find_spec("lora") is not None


# ----------------------------------------------------------------------------- AdamW

def test_first_adam_step_moves_each_weight_by_lr():
    """After bias correction, m / sqrt(v) = g / |g| on the first step: every weight moves by lr."""
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64))
    weight.grad = torch.tensor([1e-3, -5.0, 200.0, 0.1], dtype=torch.float64)
    AdamW([weight], lr=0.01, eps=1e-12).step()
    expected = torch.tensor([1.0 - 0.01, -2.0 + 0.01, 3.0 - 0.01, 0.5 - 0.01], dtype=torch.float64)
    torch.testing.assert_close(weight.detach(), expected)


def test_adam_without_bias_correction_steps_by_lr_times_the_raw_ratio():
    """correct_bias=False: the first step is lr * (1 - beta1) g / sqrt((1 - beta2) g^2) = lr * 0.1 / sqrt(0.001)."""
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    weight.grad = torch.tensor([3.0, -0.5], dtype=torch.float64)
    AdamW([weight], lr=0.01, eps=1e-12, correct_bias=False).step()
    step = 0.01 * 0.1 / math.sqrt(0.001)
    torch.testing.assert_close(weight.detach(), torch.tensor([1.0 - step, -2.0 + step], dtype=torch.float64))


def test_adam_weight_decay_is_decoupled():
    """With a zero gradient the Adam update is 0 and only the decay acts: p <- p - lr * weight_decay * p
    (an L2 term added to the gradient would instead move every weight by about lr)."""
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    weight.grad = torch.zeros(2, dtype=torch.float64)
    AdamW([weight], lr=0.1, weight_decay=0.5).step()
    torch.testing.assert_close(weight.detach(), torch.tensor([0.95, -1.9], dtype=torch.float64))


def test_adam_honours_each_parameter_group_and_skips_parameters_without_gradients():
    """Five steps against torch.optim.Adam (no decay; a tiny eps, where the two place it differently)."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(3, dtype=torch.float64)) for _ in range(3)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    groups = lambda params: [{"params": params[:1], "lr": 0.1}, {"params": params[1:], "lr": 0.01}]  # noqa: E731
    optimizer, reference = AdamW(groups(ours), eps=1e-12), torch.optim.Adam(groups(theirs), eps=1e-12)
    for _ in range(5):
        gradients = [torch.randn(3, dtype=torch.float64) for _ in range(2)]
        for params in (ours, theirs):
            params[0].grad, params[1].grad, params[2].grad = gradients[0], gradients[1].clone(), None
        optimizer.step()
        reference.step()
    for mine, expected in zip(ours, theirs):
        torch.testing.assert_close(mine.detach(), expected.detach())


def test_adam_step_returns_the_loss_of_its_closure():
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = AdamW([weight], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (weight ** 2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss is not None and math.isclose(loss.item(), 5.0)
    assert weight.grad is not None and not torch.equal(weight.detach(), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("max_grad_norm", [c.max_grad_norm for c in course.here()])
def test_adamw_matches_course_reference(reference_file, max_grad_norm):
    from optimizer_test import VARIANTS, train_toy_model
    filename = next(name for name, clip in VARIANTS.values() if clip == max_grad_norm)
    expected = torch.from_numpy(np.load(reference_file(filename)))
    torch.testing.assert_close(train_toy_model(max_grad_norm), expected, atol=1e-5, rtol=1e-3)


# ----------------------------------------------------------------------------- the classifier

@pytest.fixture
def embedding_classifier(small_model, tmp_path):
    from classifier import LlamaEmbeddingClassifier
    model = small_model()
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"model_args": model.config.to_dict(), "model": model.state_dict()}, checkpoint)
    config = SimpleNamespace(pretrained_model_path=str(checkpoint), num_labels=3, option="finetune",
                             hidden_dropout_prob=0.3)
    return LlamaEmbeddingClassifier(config).eval()


def test_embedding_classifier_reads_the_last_real_token(embedding_classifier):
    classifier = embedding_classifier
    input_ids = torch.randint(1, 96, (2, 6), generator=torch.Generator().manual_seed(0))
    _, hidden = classifier.llama(input_ids)
    expected = F.log_softmax(classifier.classifier_head(hidden[:, -1]), dim=-1)
    log_probs = classifier(input_ids)
    assert log_probs.shape == (2, 3)
    torch.testing.assert_close(log_probs, expected)


def test_embedding_classifier_of_a_padded_batch_matches_each_sentence_alone(embedding_classifier):
    """attention_mask (1 = token, 0 = pad) goes to the Llama, and the head reads the last real token:
    a right-padded and a left-padded sentence are classified as they are alone."""
    classifier = embedding_classifier
    input_ids = torch.randint(1, 96, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    log_probs = classifier(input_ids, attention_mask=mask)
    torch.testing.assert_close(log_probs[0], classifier(input_ids[:1, :4])[0])
    torch.testing.assert_close(log_probs[1], classifier(input_ids[1:, 2:])[0])


def test_embedding_classifier_applies_its_dropout(embedding_classifier, zero_out):
    """self.dropout acts on the hidden state the head reads: zeroed, only the head's bias is left."""
    classifier = embedding_classifier.train()
    classifier.dropout = zero_out()
    expected = F.log_softmax(classifier.classifier_head.bias, dim=-1).expand(2, 3)
    torch.testing.assert_close(classifier(torch.randint(1, 96, (2, 5))), expected)


# ----------------------------------------------------------------------------- LoRA

@pytest.mark.skipif(not HAS_LORA, reason="this course has no LoRA")
def test_lora_layer_adds_the_scaled_low_rank_update():
    from lora import LoRALayer
    torch.manual_seed(0)
    layer = LoRALayer(torch.nn.Linear(12, 10), rank=4, alpha=2.0)
    x = torch.randn(3, 5, 12)
    torch.testing.assert_close(layer(x), layer.original_layer(x))  # B = 0: starts as the original
    layer.lora_B.data.normal_()
    delta_weight = layer.lora_B @ layer.lora_A  # (10, 12), rank 4
    expected = layer.original_layer(x) + 0.5 * x @ delta_weight.T
    torch.testing.assert_close(layer(x), expected)
    assert math.isclose(layer.scaling, 0.5)


@pytest.mark.skipif(not HAS_LORA, reason="this course has no LoRA")
def test_lora_layer_drops_out_the_adapter_input_only(zero_out):
    from lora import LoRALayer
    torch.manual_seed(0)
    layer = LoRALayer(torch.nn.Linear(12, 10), rank=4, alpha=2.0).train()
    layer.lora_B.data.normal_()
    layer.dropout = zero_out()
    x = torch.randn(3, 12)
    torch.testing.assert_close(layer(x), layer.original_layer(x))
