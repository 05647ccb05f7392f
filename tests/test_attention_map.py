"""Tests for attention_map.py: the recorded maps equal softmax(QK^T/sqrt(d)) computed here from
each layer's input and weights, rows are distributions, recording changes nothing, an attention
that computes something else is refused, and the PNG is written whole."""

import math

import pytest
import torch

from config import LlamaConfig
from llama import Attention, Llama
from minllama.tools import attention_map
from minllama.tools.attention_map import attention_maps, main, recording_attention, save_attention_grid
from rope import apply_rotary_emb
from testkit import require_module

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny(seeded):
    config = LlamaConfig(vocab_size=50, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=16,
                         rope_theta=500.0)
    return Llama(config).eval()


def independent_maps(model, tokens):
    """Each layer's attention weights from its input (caught by a pre-hook) and its weights."""
    inputs = []
    hooks = [layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0])) for layer in model.layers]
    with torch.no_grad():
        model(tokens)
    for hook in hooks:
        hook.remove()
    config, maps = model.config, []
    for layer, x in zip(model.layers, inputs):
        attention, h = layer.attention, layer.attention_norm(x)
        batch, length, _ = x.shape
        q = attention.compute_query(h).view(batch, length, config.n_heads, config.head_dim)
        k = attention.compute_key(h).view(batch, length, config.n_kv_heads, config.head_dim)
        q, k = apply_rotary_emb(q, k, config.head_dim, config.max_seq_len, config.rope_theta)
        q = q.transpose(1, 2)  # (B, H, T, D)
        k = k.transpose(1, 2).repeat_interleave(config.n_heads // config.n_kv_heads, dim=1)
        scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(config.head_dim)
        future = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        maps.append(torch.softmax(scores.masked_fill(future, -torch.inf), dim=-1))
    return maps


@pytest.mark.parametrize("fused", [True, False])
def test_maps_equal_softmax_of_scaled_scores(tiny, fused):
    for layer in tiny.layers:
        layer.attention.fused = fused
    tokens = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        expected_logits, _ = tiny(tokens)
        with recording_attention(tiny) as maps:
            logits, _ = tiny(tokens)
    # Recording changes nothing (the fused kernel and the explicit path differ by rounding only).
    torch.testing.assert_close(logits, expected_logits, atol=1e-6, rtol=1e-5)
    assert len(maps) == 3 and maps[0].shape == (2, 4, 9, 9)
    for recorded, expected in zip(maps, independent_maps(tiny, tokens)):
        torch.testing.assert_close(recorded, expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(recorded.sum(-1), torch.ones(2, 4, 9))
        assert torch.all(recorded.triu(diagonal=1) == 0)  # causal: no weight on later tokens
    assert all(layer.attention.fused == fused for layer in tiny.layers)  # restored
    assert all("compute_query_key_value_scores" not in vars(layer.attention) for layer in tiny.layers)


def test_an_attention_without_the_scale_is_refused(tiny, monkeypatch):
    def unscaled(self, query, key, value, mask=None):
        future = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool).triu(1)
        return torch.softmax((query @ key.transpose(-2, -1)).masked_fill(future, -torch.inf), -1) @ value
    monkeypatch.setattr(Attention, "compute_query_key_value_scores", unscaled)
    with pytest.raises(ValueError, match="layer 0: .*softmax"), torch.no_grad(), recording_attention(tiny):
        tiny(torch.randint(0, 50, (1, 6)))


@pytest.mark.slow
def test_smollm2_sentence_maps(smollm2, smollm2_tokenizer):
    labels, maps = attention_maps(smollm2, smollm2_tokenizer, "The cat sat on the mat.")
    assert labels == ["The", " cat", " sat", " on", " the", " mat", "."]  # no BOS: SmolLM2 texts start without
    assert maps.shape == (30, 9, 7, 7)
    torch.testing.assert_close(maps.sum(-1), torch.ones(30, 9, 7))


def test_png_is_written_whole(tmp_path):
    require_module("matplotlib")
    maps = torch.softmax(torch.randn(2, 3, 4, 4), dim=-1)
    path = tmp_path / "attention.png"
    save_attention_grid(maps, ["a", "b", " c", "\n"], path, layer_numbers=[0, 5])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["attention.png"]  # no temporary file left


@pytest.mark.parametrize("argv, message", [
    (["--sentence", "Hi", "--pretrained-model-path", "absent.gguf"], "checkpoint not found: absent.gguf"),
    (["--sentence", " ", "--pretrained-model-path", __file__], "--sentence is empty"),
    (["--sentence", "Hi", "--pretrained-model-path", __file__, "--layers", "0,x"], "expected comma-separated"),
    (["--sentence", "Hi", "--pretrained-model-path", __file__, "--out", "/absent/a.png"], "folder does not exist"),
])
def test_bad_arguments_are_refused_before_loading(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(attention_map, "load_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
