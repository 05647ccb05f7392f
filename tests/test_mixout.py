"""Tests for mixout.py: the expectation of the mixed weight is the fine-tuned one, replaced
elements are exactly the pretrained values, eval mode is the identity, names are unchanged."""

import copy

import pytest
import torch
import torch.nn as nn

from config import LlamaConfig
from llama import Llama
from minllama.methods.mixout import MixoutLinear, apply_mixout, mixout, remove_mixout

CONFIG = dict(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, hidden_dim=64)

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


def tiny_llama():
    return Llama(LlamaConfig(**CONFIG)).eval()


def test_expectation_is_the_fine_tuned_weight():
    pretrained = torch.randn(6, 5, dtype=torch.float64)
    weight = pretrained + torch.randn(6, 5, dtype=torch.float64)
    p, draws = 0.7, 20000
    mean = sum(mixout(weight, pretrained, p) for _ in range(draws)) / draws
    # one draw's spread per element: |w - u| * sqrt(p / (1 - p)); the mean's is that / sqrt(draws)
    std = (weight - pretrained).abs() * (p / (1 - p)) ** 0.5 / draws ** 0.5
    assert ((mean - weight).abs() < 5 * std + 1e-12).all()
    assert ((mean - pretrained).abs() > 10 * std).any()  # the test can tell w from u


def test_each_element_is_the_pretrained_value_or_the_rescaled_fine_tuned_one():
    pretrained, weight, p = torch.randn(100, 100), torch.randn(100, 100), 0.3
    mixed = mixout(weight, pretrained, p)
    replaced = torch.isclose(mixed, pretrained, atol=1e-6)
    torch.testing.assert_close(mixed[~replaced], ((weight - p * pretrained) / (1 - p))[~replaced])
    assert abs(replaced.float().mean().item() - p) < 0.02  # 10,000 draws


def test_eval_mode_is_the_identity_and_names_are_unchanged():
    base = tiny_llama()
    model = apply_mixout(copy.deepcopy(base), p=0.5)
    assert isinstance(model.layers[0].attention.compute_query, MixoutLinear)
    assert isinstance(model.layers[1].feed_forward.w2, MixoutLinear)
    with torch.no_grad():  # fine-tune a little: the weights now differ from the snapshot
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    idx = torch.randint(0, CONFIG["vocab_size"], (2, 9))
    assert list(model.state_dict()) == list(base.state_dict())  # the snapshot is not saved
    plain = tiny_llama()
    plain.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(model.eval()(idx, targets=idx)[0], plain(idx, targets=idx)[0])
        trained = model.train()(idx, targets=idx)[0]
        assert (trained - plain(idx, targets=idx)[0]).abs().max() > 1e-4  # training mode mixes
    remove_mixout(model)
    assert not any(isinstance(m, MixoutLinear) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model.train()(idx, targets=idx)[0], plain(idx, targets=idx)[0])


def test_replaced_elements_get_no_gradient():
    linear = nn.Linear(8, 4)
    layer = MixoutLinear(linear, p=0.5).train()
    with torch.no_grad():
        linear.weight.add_(1.0)  # away from the snapshot, so kept and replaced elements differ
    torch.manual_seed(3)
    layer(torch.randn(5, 8)).sum().backward()
    assert (linear.weight.grad == 0).any() and (linear.weight.grad != 0).any()


def test_bad_probability_and_twice_are_refused():
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        apply_mixout(tiny_llama(), p=1.0)
    with pytest.raises(ValueError, match="already has mixout layers"):
        apply_mixout(apply_mixout(tiny_llama(), p=0.1), p=0.1)
