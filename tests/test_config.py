"""Tests for config.py: the contract's defaults, the FFN hidden-size rule, validation, and
reading checkpoint `model_args` (with llama2.c's key names) strictly."""

import io

import pytest
import torch

from config import LlamaConfig


def test_defaults_are_stories42M():
    """Reference: the defaults listed in DESIGN.md ("Model contract")."""
    config = LlamaConfig()
    assert (config.vocab_size, config.dim, config.dropout, config.n_layers, config.n_heads, config.n_kv_heads,
            config.max_seq_len, config.layer_norm_eps, config.multiple_of, config.hidden_dim) == \
        (32000, 512, 0.0, 8, 8, 8, 1024, 1e-5, 32, None)
    assert (config.norm_type, config.rope_theta) == ("rmsnorm", 10000.0)
    assert config.head_dim == 64


@pytest.mark.parametrize("dim, multiple_of, expected", [
    (512, 32, 1376),     # stories42M (DESIGN.md)
    (288, 32, 768),      # stories15M: 2*4*288/3 = 768 is already a multiple of 32
    (64, 32, 192),       # 170 rounds up to 192
    (4096, 256, 11008),  # Llama 2 7B (Touvron et al. 2023, its published FFN size)
])
def test_ffn_hidden_dim_rule(dim, multiple_of, expected):
    """Reference: FFN sizes of published models, int(2*4*dim/3) rounded up to multiple_of."""
    assert LlamaConfig(dim=dim, n_heads=8, multiple_of=multiple_of).ffn_hidden_dim == expected


def test_hidden_dim_overrides_the_rule():
    """Reference: an explicit hidden_dim is used as given (llama2.c's stories260K sets one)."""
    assert LlamaConfig(dim=64, n_heads=8, hidden_dim=172).ffn_hidden_dim == 172


def test_n_kv_heads_none_means_multi_head():
    """Reference: llama2.c's ModelArgs, where n_kv_heads=None means n_heads."""
    assert LlamaConfig(dim=64, n_heads=4, n_kv_heads=None).n_kv_heads == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=60, n_heads=8), "not divisible by n_heads"),
    (dict(dim=64, n_heads=8, n_kv_heads=3), "not a multiple of n_kv_heads"),
    (dict(dim=64, n_heads=8, n_kv_heads=16), "not a multiple of n_kv_heads"),
    (dict(norm_type="batchnorm"), "norm_type"),
    (dict(dim=24, n_heads=8), "even"),  # head_dim 3: RoPE rotates pairs
])
def test_invalid_configs_are_rejected(kwargs, message):
    """Reference: the constraints the model's reshapes and RoPE pairs need."""
    with pytest.raises(ValueError, match=message):
        LlamaConfig(**kwargs)


def test_from_dict_accepts_llama2c_model_args():
    """Reference: the `model_args` keys llama2.c's train.py writes, plus its ModelArgs name norm_eps."""
    model_args = dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, multiple_of=32,
                      max_seq_len=256, dropout=0.0, norm_eps=1e-6)
    config = LlamaConfig.from_dict(model_args)
    assert (config.dim, config.n_layers, config.n_heads, config.vocab_size, config.max_seq_len) == \
        (288, 6, 6, 32000, 256)
    assert config.layer_norm_eps == 1e-6


def test_from_dict_rejects_unknown_keys_by_name():
    """Reference: the API rule that nothing is ignored silently; the error names every unknown key."""
    with pytest.raises(ValueError, match="n_expert.*rope_kind|rope_kind.*n_expert"):
        LlamaConfig.from_dict(dict(dim=64, n_heads=4, rope_kind=2.0, n_expert=8))


def test_to_dict_round_trips_through_weights_only_torch_load():
    """Reference: torch.load(weights_only=True), which accepts plain builtins only."""
    config = LlamaConfig(vocab_size=100, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, norm_type="layernorm",
                         rope_theta=100000.0, hidden_dim=96)
    buffer = io.BytesIO()
    torch.save({"model_args": config.to_dict()}, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)["model_args"]
    assert LlamaConfig.from_dict(restored) == config


def test_from_dict_rejects_an_alias_given_with_its_target():
    """norm_eps and layer_norm_eps together would silently drop one value."""
    with pytest.raises(ValueError, match="norm_eps/layer_norm_eps"):
        LlamaConfig.from_dict({"norm_eps": 1e-5, "layer_norm_eps": 1e-6})
