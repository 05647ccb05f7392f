"""Tests for ia3.py (and the shared adapters.py): the scaled activations against a hand computation,
what trains, counting, merging, the adapter-only checkpoint. Tiny random models, CPU, seconds."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from config import LlamaConfig
from llama import Llama
from minllama.methods.ia3 import (IA3Layer, apply_ia3, count_ia3_parameters, get_ia3_optimizer_params, ia3_state_dict,
                                  load_ia3_state_dict, merge_ia3_weights)
from support.adapters import parse_targets

CONFIG = dict(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, hidden_dim=96)
KV_DIM = CONFIG["dim"] // CONFIG["n_heads"] * CONFIG["n_kv_heads"]

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


def tiny_llama() -> Llama:
    return Llama(LlamaConfig(**CONFIG)).eval()


def tokens(batch_size=2, seq_len=12) -> torch.Tensor:
    return torch.randint(0, CONFIG["vocab_size"], (batch_size, seq_len))


def all_logits(model, idx):
    return model(idx, targets=idx)[0]


def perturb(model):
    """Vectors away from ones: at init IA3 is the identity, which would hide most mistakes."""
    with torch.no_grad():
        for p in get_ia3_optimizer_params(model):
            p.copy_(1 + 0.5 * torch.randn_like(p))


def test_vectors_start_at_ones_with_the_activation_sizes():
    model = apply_ia3(tiny_llama())
    attention, feed_forward = model.layers[0].attention, model.layers[0].feed_forward
    assert attention.compute_key.ia3_scale.shape == attention.compute_value.ia3_scale.shape == (KV_DIM,)
    assert feed_forward.w2.ia3_scale.shape == (CONFIG["hidden_dim"],)
    assert torch.equal(feed_forward.w2.ia3_scale, torch.ones(CONFIG["hidden_dim"]))
    assert type(attention.compute_query) is nn.Linear and type(feed_forward.w1) is nn.Linear


def test_at_init_the_model_is_unchanged():
    base = tiny_llama()
    idx = tokens()
    with torch.no_grad():
        assert torch.equal(all_logits(apply_ia3(copy.deepcopy(base)), idx), all_logits(base, idx))


def test_keys_values_and_ffn_inner_activation_are_scaled_as_by_hand():
    base = tiny_llama()
    model = apply_ia3(copy.deepcopy(base))
    perturb(model)
    x = torch.randn(2, 5, CONFIG["dim"])
    plain, adapted = base.layers[1], model.layers[1]
    l_k, l_v = adapted.attention.compute_key.ia3_scale, adapted.attention.compute_value.ia3_scale
    l_ff = adapted.feed_forward.w2.ia3_scale
    with torch.no_grad():
        torch.testing.assert_close(adapted.attention.compute_key(x), l_k * (x @ plain.attention.compute_key.weight.T))
        torch.testing.assert_close(adapted.attention.compute_value(x),
                                   l_v * (x @ plain.attention.compute_value.weight.T))
        inner = F.silu(x @ plain.feed_forward.w1.weight.T) * (x @ plain.feed_forward.w3.weight.T)  # (B, T, hidden)
        torch.testing.assert_close(adapted.feed_forward(x), (l_ff * inner) @ plain.feed_forward.w2.weight.T)
        # and the queries are not touched
        torch.testing.assert_close(adapted.attention.compute_query(x), plain.attention.compute_query(x))


def test_only_the_vectors_train_and_are_counted():
    model = apply_ia3(tiny_llama())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith("ia3_scale") for name in trainable)
    per_layer = 2 * KV_DIM + CONFIG["hidden_dim"]
    base_total = sum(p.numel() for p in tiny_llama().parameters())
    count = count_ia3_parameters(model)
    assert count == (CONFIG["n_layers"] * per_layer,) * 2 + (base_total + CONFIG["n_layers"] * per_layer,)
    loss = all_logits(model.train(), tokens()).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in get_ia3_optimizer_params(model))
    assert model.layers[0].attention.compute_key.original_layer.weight.grad is None


def test_merge_folds_the_vectors_and_keeps_the_outputs():
    base = tiny_llama()
    model = apply_ia3(copy.deepcopy(base))
    perturb(model)
    idx = tokens()
    with torch.no_grad():
        adapted = all_logits(model, idx)
        assert (adapted - all_logits(base, idx)).abs().max() > 1e-3
    merged = merge_ia3_weights(model)
    assert not any(isinstance(m, IA3Layer) for m in merged.modules())
    assert list(merged.state_dict()) == list(base.state_dict())
    fresh = tiny_llama()
    fresh.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(all_logits(fresh, idx), adapted, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no IA3 layers to merge"):
        merge_ia3_weights(fresh)


def test_merge_scales_rows_for_outputs_and_columns_for_inputs():
    out_side, in_side = nn.Linear(4, 3, bias=True), nn.Linear(4, 3, bias=False)
    w_out, b_out, w_in = out_side.weight.detach().clone(), out_side.bias.detach().clone(), in_side.weight.detach().clone()
    model = apply_ia3(nn.ModuleDict({"a": out_side, "b": in_side}), targets={"a": "output", "b": "input"})
    with torch.no_grad():
        model["a"].ia3_scale.copy_(torch.tensor([1.0, 2.0, 3.0]))
        model["b"].ia3_scale.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    merge_ia3_weights(model)
    assert torch.equal(model["a"].weight, w_out * torch.tensor([[1.0], [2.0], [3.0]]))
    assert torch.equal(model["a"].bias, b_out * torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(model["b"].weight, w_in * torch.tensor([[1.0, 2.0, 3.0, 4.0]]))


def test_state_dict_round_trip_is_strict(tmp_path):
    base = tiny_llama()
    trained = apply_ia3(copy.deepcopy(base))
    perturb(trained)
    path = tmp_path / "ia3.pt"
    torch.save(ia3_state_dict(trained), path)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {f"layers.{i}.{m}.ia3_scale" for i in range(CONFIG["n_layers"])
                          for m in ("attention.compute_key", "attention.compute_value", "feed_forward.w2")}
    restored = load_ia3_state_dict(apply_ia3(copy.deepcopy(base)), saved)
    idx = tokens()
    with torch.no_grad():
        assert torch.equal(all_logits(restored, idx), all_logits(trained, idx))
    del saved["layers.0.feed_forward.w2.ia3_scale"]
    with pytest.raises(ValueError, match=r"missing: \['layers.0.feed_forward.w2.ia3_scale'\]"):
        load_ia3_state_dict(apply_ia3(copy.deepcopy(base)), saved)
    with pytest.raises(ValueError, match="call apply_ia3"):
        load_ia3_state_dict(tiny_llama(), saved)


def test_apply_ia3_refuses_twice_and_unknown_targets():
    with pytest.raises(ValueError, match="already has IA3 layers"):
        apply_ia3(apply_ia3(tiny_llama()))
    with pytest.raises(ValueError, match=r"no nn.Linear named \['wk'\]"):
        apply_ia3(tiny_llama(), targets={"wk": "output"})
    with pytest.raises(ValueError, match="side must be"):
        IA3Layer(nn.Linear(2, 2), "both")


def test_parse_targets_reads_groups_and_names():
    assert parse_targets("attention") == ("compute_query", "compute_key", "compute_value", "compute_output")
    assert parse_targets("ffn") == ("w1", "w2", "w3")
    assert parse_targets("w2, compute_value") == ("compute_value", "w2")  # the model's order
    assert len(parse_targets("all")) == len(parse_targets("attention,ffn")) == 7
    with pytest.raises(ValueError, match="unknown projection 'wq'"):
        parse_targets("attention,wq")
