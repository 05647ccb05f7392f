"""Tests for wise_ft.py: the interpolation, and the label-word head that makes a = 0 the
zero-shot classifier exactly (tiny random Llama with Llama 2's vocabulary and tokenizer)."""

from types import SimpleNamespace

import pytest
import torch

from classifier import LlamaEmbeddingClassifier, LlamaZeroShotClassifier, zero_shot_question
from config import LlamaConfig
from llama import Llama
from minllama.methods.wise_ft import (init_label_word_head, interpolate_state_dicts, label_word_ids,
                                      lora_zero_shot_state, parse_alphas, wise_ft_sweep)
from tokenizer import Tokenizer

SST_LABELS = ["awful", "bad", "average", "good", "excellent"]  # data/sst-label-mapping.json
SENTENCES = ["A gorgeous , witty , seductive movie .", "Bad .", "It 's a film .", "Nothing happens , slowly .",
             "The acting is fine but the plot is thin ."]

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=96)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    state = Llama(config).state_dict()
    state["output.weight"] *= 50  # (tied to the embeddings) label scores nats apart: a wrong head row shows
    torch.save({"model_args": config.to_dict(), "model": state}, path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_model_path):
    return Tokenizer(tokenizer_model=tokenizer_model_path)


def config(path, option="pretrain"):
    return SimpleNamespace(pretrained_model_path=path, num_labels=len(SST_LABELS), option=option,
                           hidden_dropout_prob=0.3)


def batch(tokenizer, question_ids):
    rows = [[tokenizer.bos_id] + tokenizer.encode(s, bos=False, eos=False) + question_ids for s in SENTENCES]
    longest = max(map(len, rows))
    ids = torch.tensor([r + [0] * (longest - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    return ids, mask


def test_alpha_zero_is_the_zero_shot_classifier(checkpoint, tokenizer):
    zero_shot = LlamaZeroShotClassifier(config(checkpoint), tokenizer, SST_LABELS)
    assert zero_shot.max_label_len == 1  # the exactness needs one-token labels
    model = LlamaEmbeddingClassifier(config(checkpoint, "finetune"))
    init_label_word_head(model.classifier_head, model.llama.output,
                         label_word_ids(tokenizer, SST_LABELS, zero_shot_question(SST_LABELS)))
    theta_0 = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():  # "fine-tuning": every weight moves
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theta_1 = {name: p.detach().clone() for name, p in model.named_parameters()}

    ids, mask = batch(tokenizer, zero_shot.question_ids)
    expected = zero_shot(ids, attention_mask=mask)  # log p(label | prompt) over the whole vocabulary
    best, scores = wise_ft_sweep(model, theta_0, theta_1, [0.0], lambda m: 0.0)
    assert best == 0.0 and scores == {0.0: 0.0}
    with torch.no_grad():
        log_probs = model.eval()(ids, attention_mask=mask)
    torch.testing.assert_close(log_probs, expected.log_softmax(-1), atol=1e-5, rtol=1e-5)  # renormalised over labels
    assert torch.equal(log_probs.argmax(-1), expected.argmax(-1))

    model.load_state_dict({**model.state_dict(), **interpolate_state_dicts(theta_0, theta_1, 1.0)})
    with torch.no_grad():
        assert not torch.allclose(model(ids, attention_mask=mask), log_probs, atol=1e-3)  # a = 1 differs


def test_interpolation_is_the_weighted_mean():
    theta_0 = {"w": torch.zeros(3), "b": torch.ones(2), "steps": torch.tensor([4])}
    theta_1 = {"w": torch.tensor([1.0, 2.0, 4.0]), "b": torch.ones(2) * 3, "steps": torch.tensor([4])}
    mixed = interpolate_state_dicts(theta_0, theta_1, 0.25)
    assert torch.equal(mixed["w"], torch.tensor([0.25, 0.5, 1.0])) and torch.equal(mixed["b"], torch.ones(2) * 1.5)
    assert torch.equal(mixed["steps"], torch.tensor([4]))
    assert torch.equal(interpolate_state_dicts(theta_0, theta_1, 1.0)["w"], theta_1["w"])
    with pytest.raises(ValueError, match="different tensors"):
        interpolate_state_dicts(theta_0, {"w": theta_1["w"]}, 0.5)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        interpolate_state_dicts(theta_0, theta_1, 1.5)


def test_sweep_keeps_the_best_alpha_loaded():
    model = torch.nn.Linear(1, 1, bias=False)
    theta_0, theta_1 = {"weight": torch.zeros(1, 1)}, {"weight": torch.ones(1, 1)}
    best, scores = wise_ft_sweep(model, theta_0, theta_1, [0.0, 0.5, 1.0],
                                 lambda m: -abs(m.weight.item() - 0.5))  # best at a = 0.5
    assert best == 0.5 and model.weight.item() == 0.5 and set(scores) == {0.0, 0.5, 1.0}


def test_lora_theta_0_zeroes_b_only():
    theta_1 = {"x.lora_A": torch.ones(2, 3), "x.lora_B": torch.ones(3, 2), "head.weight": torch.ones(1)}
    theta_0 = lora_zero_shot_state(theta_1)
    assert torch.equal(theta_0["x.lora_B"], torch.zeros(3, 2)) and torch.equal(theta_0["x.lora_A"], theta_1["x.lora_A"])


def test_alphas_are_parsed_and_checked():
    assert parse_alphas("0,0.5,1") == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match=r"must be in \[0, 1\], got \[1.2\]"):
        parse_alphas("0,1.2")
    with pytest.raises(ValueError, match="comma-separated numbers"):
        parse_alphas("0;1")
