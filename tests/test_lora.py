"""Tests for lora.py: the LoRA layer, wrapping a Llama, training only the adapters,
merging, saving/loading adapters. Small random models, CPU, a few seconds."""

import copy

import pytest
import torch
import torch.nn as nn

from config import LlamaConfig
from llama import Llama
from lora import (ATTENTION_PROJECTIONS, LoRALayer, ParameterCount, apply_lora, count_lora_parameters,
                  get_lora_optimizer_params, load_lora_state_dict, lora_state_dict, merge_lora_weights)
from support.adapters import parse_targets

# GQA (n_kv_heads < n_heads) so that key/value projections have a different shape from query/output
CONFIG = dict(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, hidden_dim=96)
RANK, ALPHA = 4, 8.0


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def tiny_llama() -> Llama:
    return Llama(LlamaConfig(**CONFIG)).eval()


def tokens(batch_size=2, seq_len=12) -> torch.Tensor:
    return torch.randint(0, CONFIG["vocab_size"], (batch_size, seq_len))


def all_logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """(B, T, V): with targets, Llama.forward returns logits for every position."""
    logits, _ = model(idx, targets=idx)
    return logits


def perturb_adapters(model: nn.Module, std: float = 0.1):
    """Give every adapter non-zero values (B is zero at init, which would hide most mistakes)."""
    with torch.no_grad():
        for p in get_lora_optimizer_params(model):
            p.normal_(0.0, std)


# ---------------------------------------------------------------------------------------------
# LoRALayer on a plain nn.Linear


def test_layer_init_follows_the_paper():
    linear = nn.Linear(4096, 32, bias=True)
    layer = LoRALayer(linear, rank=8, alpha=2.0)
    assert layer.original_layer is linear
    assert (layer.rank, layer.alpha, layer.scaling) == (8, 2.0, 0.25)
    assert layer.lora_A.shape == (8, 4096) and layer.lora_B.shape == (32, 8)
    assert torch.equal(layer.lora_B, torch.zeros(32, 8))
    assert layer.lora_A.mean().abs() < 1e-3 and abs(layer.lora_A.std().item() - 0.02) < 1e-3  # 32768 draws
    assert not linear.weight.requires_grad and not linear.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_adapters_follow_the_original_dtype():
    layer = LoRALayer(nn.Linear(8, 6, dtype=torch.float64))
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float64


def test_layer_equals_original_at_init():
    linear = nn.Linear(16, 8)
    layer = LoRALayer(linear, rank=4, alpha=1.0)
    x = torch.randn(3, 5, 16)
    assert torch.equal(layer(x), linear(x))


def test_layer_forward_is_w_x_plus_scaled_b_a_x():
    linear = nn.Linear(16, 8, dtype=torch.float64)
    layer = LoRALayer(linear, rank=3, alpha=6.0)
    with torch.no_grad():
        layer.lora_A.normal_()
        layer.lora_B.normal_()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    W, b, A, B = linear.weight, linear.bias, layer.lora_A, layer.lora_B
    expected = torch.einsum("oi,bti->bto", W + 2.0 * B @ A, x) + b  # scaling = 6 / 3
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)


def test_dropout_touches_only_the_adapter_path():
    linear = nn.Linear(16, 8)
    layer = LoRALayer(linear, rank=4, dropout=0.9).train()
    x = torch.randn(64, 16)
    assert torch.equal(layer(x), linear(x))  # B = 0: whatever dropout does, the frozen path is intact
    with torch.no_grad():
        layer.lora_B.normal_()
    assert not torch.allclose(layer(x), layer(x))  # train mode: random masks on the adapter input
    layer.eval()
    torch.testing.assert_close(layer(x), linear(x) + layer.scaling * x @ (layer.lora_B @ layer.lora_A).T)


@pytest.mark.parametrize("rank", [0, -2, 2.5, True, None])
def test_layer_rejects_bad_rank(rank):
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LoRALayer(nn.Linear(4, 4), rank=rank)


def test_layer_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        LoRALayer(nn.Linear(4, 4), alpha=float("nan"))


@pytest.mark.parametrize("module", [nn.Conv1d(4, 4, 1), nn.Embedding(10, 4), nn.Sequential(nn.Linear(4, 4))])
def test_layer_wraps_only_linear(module):
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        LoRALayer(module)


def test_layer_refuses_to_wrap_itself():
    with pytest.raises(ValueError, match="already is a LoRALayer"):
        LoRALayer(LoRALayer(nn.Linear(4, 4)))


# ---------------------------------------------------------------------------------------------
# apply_lora on a Llama


def test_apply_lora_wraps_the_four_attention_projections_of_every_layer():
    model = apply_lora(tiny_llama(), rank=RANK, alpha=ALPHA)
    wrapped = {name for name, module in model.named_modules() if isinstance(module, LoRALayer)}
    layers = range(CONFIG["n_layers"])
    assert wrapped == {f"layers.{i}.attention.{p}" for i in layers for p in ATTENTION_PROJECTIONS}
    kv_dim = CONFIG["dim"] // CONFIG["n_heads"] * CONFIG["n_kv_heads"]
    assert model.layers[0].attention.compute_key.lora_B.shape == (kv_dim, RANK)
    assert model.layers[0].attention.compute_query.scaling == ALPHA / RANK


def test_apply_lora_keeps_outputs_at_init():
    base = tiny_llama()
    model = apply_lora(copy.deepcopy(base), rank=RANK, alpha=ALPHA)
    idx = tokens()
    assert torch.equal(all_logits(model, idx), all_logits(base, idx))


def test_only_lora_parameters_require_grad():
    model = apply_lora(tiny_llama(), rank=RANK, alpha=ALPHA)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    lora = {name for name, _ in model.named_parameters() if "lora_" in name}
    assert trainable == lora and len(lora) == 2 * 4 * CONFIG["n_layers"]


def test_gradients_reach_only_the_adapters():
    model = apply_lora(tiny_llama(), rank=RANK, alpha=ALPHA)
    perturb_adapters(model)  # with B = 0 the gradient of every A would be exactly zero
    idx = tokens()
    logits = all_logits(model, idx)
    nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_a_training_step_changes_only_the_adapters():
    model = apply_lora(tiny_llama(), rank=RANK, alpha=ALPHA).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(get_lora_optimizer_params(model), lr=1e-2)
    idx = tokens()
    for _ in range(2):  # step 1 moves only B (A's gradient is B^T(...) = 0); step 2 moves A too
        optimizer.zero_grad()
        logits = all_logits(model, idx)
        nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
        optimizer.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == ("lora_" in name), name


def test_apply_lora_refuses_to_wrap_twice():
    model = apply_lora(tiny_llama())
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(model)


def test_apply_lora_rejects_unknown_targets():
    with pytest.raises(ValueError, match=r"no nn.Linear named \['wq'\]"):
        apply_lora(tiny_llama(), targets=("compute_query", "wq"))


def test_apply_lora_accepts_other_targets():
    model = apply_lora(tiny_llama(), targets="w2")  # one name, given as a plain string
    wrapped = [name for name, module in model.named_modules() if isinstance(module, LoRALayer)]
    assert wrapped == [f"layers.{i}.feed_forward.w2" for i in range(CONFIG["n_layers"])]


def test_lora_targets_and_dropout_reach_every_wrapped_layer():
    """--lora_targets attention,ffn --lora_dropout 0.2: all seven projections, each with its dropout."""
    model = apply_lora(tiny_llama(), targets=parse_targets("attention,ffn"), dropout=0.2)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}
    assert len(layers) == 7 * CONFIG["n_layers"] and "layers.1.feed_forward.w3" in layers
    assert {m.dropout.p for m in layers.values()} == {0.2}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * len(layers) and all("lora_" in name for name in trainable)


def test_the_caller_decides_whether_a_head_trains():
    class Classifier(nn.Module):  # the shape of classifier.LlamaEmbeddingClassifier
        def __init__(self):
            super().__init__()
            self.llama = tiny_llama()
            self.classifier_head = nn.Linear(CONFIG["dim"], 3)

    backbone_only = Classifier()
    apply_lora(backbone_only.llama)
    assert backbone_only.classifier_head.weight.requires_grad
    whole = Classifier()
    apply_lora(whole)
    assert not whole.classifier_head.weight.requires_grad


# ---------------------------------------------------------------------------------------------
# counting, optimizer parameters


def test_count_lora_parameters_from_shapes():
    dim, n_layers, vocab = CONFIG["dim"], CONFIG["n_layers"], CONFIG["vocab_size"]
    kv_dim = dim // CONFIG["n_heads"] * CONFIG["n_kv_heads"]
    hidden = CONFIG["hidden_dim"]
    # per layer: query and output (dim, dim), key and value (kv_dim, dim), SwiGLU 3 x (dim, hidden), 2 RMSNorms
    base_per_layer = 2 * dim * dim + 2 * kv_dim * dim + 3 * dim * hidden + 2 * dim
    base = vocab * dim + n_layers * base_per_layer + dim  # output.weight is tok_embeddings.weight: once
    # an adapter on (out, in) holds A (r, in) and B (out, r)
    lora_per_layer = 2 * RANK * (dim + dim) + 2 * RANK * (dim + kv_dim)
    lora = n_layers * lora_per_layer

    assert count_lora_parameters(tiny_llama()) == (0, base, base)
    model = apply_lora(tiny_llama(), rank=RANK, alpha=ALPHA)
    count = count_lora_parameters(model)
    assert isinstance(count, ParameterCount)
    assert count == (lora, lora, base + lora)
    assert count.trainable_fraction == pytest.approx(lora / (base + lora))
    assert f"{lora:,}" in str(count)

    model.norm.requires_grad_(True)  # something the caller unfroze counts as trainable, not as LoRA
    assert count_lora_parameters(model) == (lora, lora + dim, base + lora)


def test_get_lora_optimizer_params_returns_exactly_the_adapters():
    model = apply_lora(tiny_llama())
    expected = [p for m in model.modules() if isinstance(m, LoRALayer) for p in (m.lora_A, m.lora_B)]
    assert {id(p) for p in get_lora_optimizer_params(model)} == {id(p) for p in expected}
    assert len(get_lora_optimizer_params(model)) == len(expected)


def test_get_lora_optimizer_params_needs_adapters():
    with pytest.raises(ValueError, match="call apply_lora"):
        get_lora_optimizer_params(tiny_llama())


def test_lora_optimizer_keeps_state_only_for_adapters():
    """What LoRA saves: AdamW's two moment tensors exist only for the adapters."""
    def adam_state_numbers(model, params):
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        idx = tokens()
        logits = all_logits(model, idx)
        nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
        optimizer.step()
        return sum(t.numel() for s in optimizer.state.values() for t in s.values() if t.dim() > 0)

    full = tiny_llama().train()
    full_state = adam_state_numbers(full, full.parameters())
    lora_model = apply_lora(tiny_llama(), rank=RANK, alpha=ALPHA).train()
    lora_state = adam_state_numbers(lora_model, get_lora_optimizer_params(lora_model))
    count = count_lora_parameters(lora_model)
    assert full_state == 2 * (count.total - count.adapter) and lora_state == 2 * count.adapter
    print(f"\n{count}\nAdamW state: full fine-tuning {full_state:,} numbers, LoRA {lora_state:,} "
          f"({100 * lora_state / full_state:.2f}%)")


# ---------------------------------------------------------------------------------------------
# merging


def test_merge_gives_a_plain_llama_with_the_same_outputs():
    base = tiny_llama()
    model = apply_lora(copy.deepcopy(base), rank=RANK, alpha=ALPHA)
    perturb_adapters(model)
    idx = tokens()
    with torch.no_grad():
        lora_logits = all_logits(model, idx)
        assert (lora_logits - all_logits(base, idx)).abs().max() > 1e-3  # the adapters do change the model

    merged = merge_lora_weights(model)
    assert merged is model
    assert not any(isinstance(m, LoRALayer) for m in merged.modules())
    assert all(type(merged.layers[i].attention.compute_value) is nn.Linear for i in range(CONFIG["n_layers"]))
    assert list(merged.state_dict().keys()) == list(base.state_dict().keys())
    with torch.no_grad():
        torch.testing.assert_close(all_logits(merged, idx), lora_logits, atol=1e-6, rtol=0)

    # the merged weights load strictly into a fresh Llama, as a pretrained checkpoint would
    fresh = tiny_llama()
    fresh.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(all_logits(fresh, idx), lora_logits, atol=1e-6, rtol=0)


def test_greedy_generation_is_the_same_before_and_after_merging():
    model = apply_lora(tiny_llama(), rank=RANK, alpha=ALPHA)
    perturb_adapters(model)
    prompt = tokens(batch_size=2, seq_len=5)
    with_adapters = model.generate(prompt, max_new_tokens=8, temperature=0.0)  # through the KV cache
    merged = merge_lora_weights(model)
    assert torch.equal(merged.generate(prompt, max_new_tokens=8, temperature=0.0), with_adapters)


def test_merge_folds_scaled_b_a_into_the_weight():
    linear = nn.Linear(16, 8, dtype=torch.float64)
    original_weight, original_bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    model = nn.Sequential(linear)
    apply_lora(model, rank=2, alpha=3.0, targets=("0",))
    layer = model[0]
    perturb_adapters(model)
    merge_lora_weights(model)
    assert model[0] is linear
    expected = original_weight + 1.5 * layer.lora_B @ layer.lora_A  # scaling = 3 / 2
    torch.testing.assert_close(linear.weight, expected, atol=1e-15, rtol=0)
    assert torch.equal(linear.bias, original_bias)


def test_merge_needs_adapters_and_allows_a_new_round():
    with pytest.raises(ValueError, match="no LoRA layers to merge"):
        merge_lora_weights(tiny_llama())
    model = merge_lora_weights(apply_lora(tiny_llama()))
    apply_lora(model)  # after merging, a second adapter can be trained on top
    assert count_lora_parameters(model).adapter > 0


# ---------------------------------------------------------------------------------------------
# saving and loading adapters


def test_lora_state_dict_round_trip(tmp_path):
    base = tiny_llama()
    trained = apply_lora(copy.deepcopy(base), rank=RANK, alpha=ALPHA)
    perturb_adapters(trained)
    adapters = lora_state_dict(trained)
    assert set(adapters) == {name for name, _ in trained.named_parameters() if "lora_" in name}

    path = tmp_path / "adapters.pt"
    torch.save(adapters, path)
    restored = apply_lora(copy.deepcopy(base), rank=RANK, alpha=ALPHA)
    assert load_lora_state_dict(restored, torch.load(path, weights_only=True)) is restored
    idx = tokens()
    with torch.no_grad():
        assert torch.equal(all_logits(restored, idx), all_logits(trained, idx))


def test_lora_state_dict_is_a_snapshot():
    model = apply_lora(tiny_llama())
    adapters = lora_state_dict(model)
    perturb_adapters(model)
    assert torch.equal(adapters["layers.0.attention.compute_query.lora_B"], torch.zeros(CONFIG["dim"], 4))


def test_load_lora_state_dict_rejects_another_rank():
    adapters = lora_state_dict(apply_lora(tiny_llama(), rank=8))
    expected = r"shapes do not match.*compute_query\.lora_A: saved \(8, 64\), model \(4, 64\)"
    with pytest.raises(ValueError, match=expected):
        load_lora_state_dict(apply_lora(tiny_llama(), rank=4), adapters)


def test_load_lora_state_dict_rejects_missing_and_unexpected_names():
    model = apply_lora(tiny_llama())
    adapters = lora_state_dict(model)
    del adapters["layers.1.attention.compute_value.lora_A"]
    adapters["layers.9.attention.compute_value.lora_A"] = torch.zeros(4, 64)
    with pytest.raises(ValueError, match=r"missing: \['layers.1.attention.compute_value.lora_A'\]; "
                                         r"unexpected: \['layers.9.attention.compute_value.lora_A'\]"):
        load_lora_state_dict(model, adapters)


def test_load_lora_state_dict_needs_a_wrapped_model():
    adapters = lora_state_dict(apply_lora(tiny_llama()))
    with pytest.raises(ValueError, match="call apply_lora"):
        load_lora_state_dict(tiny_llama(), adapters)
