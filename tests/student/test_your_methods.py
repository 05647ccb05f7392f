"""Checks of the parameter-efficient methods a course may add beside LoRA: IA3 and prompt tuning.

Neither is in the two courses' skeletons; an instructor who adds one to a course (course.py)
ships its module with its todos, and these checks with it. Each runs only where its module is."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F



def has_module(name: str) -> bool:
    """Whether this copy of the code has the module (a skeleton lacks even the package around it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


HAS_IA3 = has_module("minllama.methods.ia3")
HAS_PROMPT_TUNING = has_module("minllama.methods.prompt_tuning")


# ----------------------------------------------------------------------------- IA3

@pytest.mark.skipif(not HAS_IA3, reason="this course has no IA3")
@pytest.mark.parametrize("side", ["output", "input"])
def test_ia3_layer_scales_its_side_element_wise(side):
    from minllama.methods.ia3 import IA3Layer
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 4)
    layer = IA3Layer(linear, side)
    x = torch.randn(3, 5, 6)
    torch.testing.assert_close(layer(x), linear(x))  # ones: the original layer
    with torch.no_grad():
        layer.ia3_scale.uniform_(0.5, 1.5)
    scale = layer.ia3_scale.detach()
    expected = F.linear(x, linear.weight, linear.bias) * scale if side == "output" else linear(x * scale)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.skipif(not HAS_IA3, reason="this course has no IA3")
def test_ia3_vectors_fold_into_the_weights(small_model):
    from minllama.methods.ia3 import apply_ia3, merge_ia3_weights
    model = small_model()
    names = set(model.state_dict())
    apply_ia3(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "ia3_" in name:
                parameter.uniform_(0.5, 1.5)
    tokens = torch.randint(0, 96, (2, 9))
    adapted, _ = model(tokens, targets=tokens)
    merge_ia3_weights(model)
    assert set(model.state_dict()) == names  # plain nn.Linear layers again
    merged, _ = model(tokens, targets=tokens)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- prompt tuning

@pytest.mark.skipif(not HAS_PROMPT_TUNING, reason="this course has no prompt tuning")
def test_soft_prompt_reads_as_the_tokens_it_starts_from_and_alone_gets_gradients(small_model):
    """Initialised from tokens' embeddings, the soft prompt is those tokens: the real tokens'
    hidden states are the frozen model's on prompt + tokens."""
    from minllama.methods.prompt_tuning import PromptTunedLlama
    model = small_model()
    init_ids = [5, 17, 3]
    tuned = PromptTunedLlama(model, init_ids)
    tokens = torch.randint(0, 96, (2, 6))
    logits, hidden = tuned(tokens, targets=tokens)
    full = torch.cat([torch.tensor([init_ids, init_ids]), tokens], dim=1)
    expected_logits, expected_hidden = model(full, targets=full)
    torch.testing.assert_close(hidden, expected_hidden[:, 3:])
    torch.testing.assert_close(logits, expected_logits[:, 3:])
    hidden.sum().backward()
    assert tuned.prompt_embeddings.grad is not None and tuned.prompt_embeddings.grad.abs().sum() > 0
    assert model.tok_embeddings.weight.grad is None  # the backbone stays frozen
