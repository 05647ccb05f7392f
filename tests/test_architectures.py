"""The pre-training ablations (architectures.py): each against its paper's formula written out
with plain torch ops, the model-level guarantees every Llama keeps (a KV cache and padding change
nothing), checkpoints that rebuild the variant, and every bad combination of flags."""

import math

import pytest
import torch
import torch.nn.functional as F

import run_llama
from config import LlamaConfig
from llama import Attention, FeedForward, Llama, load_pretrained
from minllama.pretraining.architectures import DifferentialAttention, GeluFeedForward, UnrotatedAttention, alibi_slopes
from minllama.tools.export import ExportError, export

VARIANTS = [{}, {"positional": "alibi"}, {"positional": "none"}, {"ffn": "gelu"}, {"attention": "differential"},
            {"attention": "differential", "n_kv_heads": 2}]


def tiny_config(**changes) -> LlamaConfig:
    return LlamaConfig(**{"vocab_size": 50, "dim": 48, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4,
                          "max_seq_len": 32, **changes})


def tiny_model(**changes) -> Llama:
    torch.manual_seed(0)
    return Llama(tiny_config(**changes)).eval()


def causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    T = scores.shape[-1]
    return scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)


def heads(linear, x, n, d):  # (B, T, dim) -> (B, n, T, d)
    return linear(x).view(x.shape[0], x.shape[1], n, d).transpose(1, 2)


def test_alibi_slopes_are_the_papers():
    assert alibi_slopes(8) == pytest.approx([2 ** -i for i in range(1, 9)])
    # 6 heads: the 4-head sequence, then every other slope of the 8-head one (Press et al., footnote)
    assert alibi_slopes(6) == pytest.approx([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3])


def test_alibi_attention_is_softmax_of_scores_minus_slope_times_distance():
    model = tiny_model(positional="alibi")
    attention = model.layers[0].attention
    assert isinstance(attention, UnrotatedAttention)
    x = torch.randn(2, 7, 48)
    q, k, v = (heads(p, x, 4, 12) for p in (attention.compute_query, attention.compute_key, attention.compute_value))
    distance = torch.arange(7)[:, None] - torch.arange(7)[None, :]
    slopes = torch.tensor(alibi_slopes(4))[:, None, None]
    probabilities = causal_softmax(q @ k.transpose(-2, -1) / math.sqrt(12) - slopes * distance)
    expected = attention.compute_output((probabilities @ v).transpose(1, 2).reshape(2, 7, 48))
    torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)


def test_without_positions_a_layer_sees_the_earlier_tokens_as_a_set():
    """One layer: the last token attends over the earlier ones; with no positional signal their
    order cannot matter (Kazemnejad et al.'s point is that depth recovers it), with RoPE it does."""
    tokens = torch.tensor([[3, 9, 4, 11, 7]])
    shuffled = torch.tensor([[4, 3, 11, 9, 7]])
    for positional, same in (("none", True), ("rope", False), ("alibi", False)):
        model = tiny_model(positional=positional, n_layers=1)
        last = [model(t, targets=t)[1][0, -1] for t in (tokens, shuffled)]
        assert torch.allclose(*last, atol=1e-5) == same, positional


def test_differential_attention_is_the_papers_formula():
    model = tiny_model(attention="differential")
    attention = model.layers[1].attention
    assert isinstance(attention, DifferentialAttention)
    assert attention.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.3))
    x = torch.randn(2, 5, 48)
    q, k = (heads(p, x, 4, 12) for p in (attention.compute_query, attention.compute_key))
    v = heads(attention.compute_value, x, 2, 24)  # two differential heads, values of width 2d
    from rope import apply_rotary_emb
    q, k = (t.transpose(1, 2) for t in apply_rotary_emb(q.transpose(1, 2), k.transpose(1, 2), 12, 32, 10000.0))
    lam = (torch.exp((attention.lambda_q1 * attention.lambda_k1).sum())
           - torch.exp((attention.lambda_q2 * attention.lambda_k2).sum()) + attention.lambda_init)
    scale = 1 / math.sqrt(12)
    maps = (causal_softmax(q[:, 0::2] @ k[:, 0::2].transpose(-2, -1) * scale)
            - lam * causal_softmax(q[:, 1::2] @ k[:, 1::2].transpose(-2, -1) * scale))
    per_head = maps @ v  # (B, 2, T, 24)
    normed = per_head * torch.rsqrt(per_head.pow(2).mean(-1, keepdim=True) + 1e-5) * (1 - attention.lambda_init)
    expected = attention.compute_output(normed.transpose(1, 2).reshape(2, 5, 48))
    torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)


def test_gelu_feed_forward_has_swiglus_parameter_count():
    for dim in (48, 288):
        config = tiny_config(dim=dim, n_heads=4)
        gelu, swiglu = GeluFeedForward(config), FeedForward(config)
        assert sum(p.numel() for p in gelu.parameters()) == sum(p.numel() for p in swiglu.parameters())
        x = torch.randn(3, dim)
        torch.testing.assert_close(gelu(x), gelu.w2(F.gelu(gelu.w1(x))))


@pytest.mark.parametrize("changes", VARIANTS, ids=lambda c: "-".join(map(str, c.values())) or "llama2")
def test_every_variant_keeps_cache_and_padding_invariance(changes):
    model = tiny_model(**changes)
    layer = model.layers[0]
    assert isinstance(layer.attention, Attention) and (type(layer.attention) is Attention) == (
        not {"positional", "attention"} & set(changes))
    tokens = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(model.generate(tokens, 12, temperature=0.0),
                               model.generate(tokens, 12, temperature=0.0, use_cache=False), rtol=0, atol=0)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # row 1 is left-padded by 3
    padded, _ = model(tokens, targets=tokens, attention_mask=mask)
    alone, _ = model(tokens[1:, 3:], targets=tokens[1:, 3:])
    torch.testing.assert_close(padded[1, 3:], alone[0], atol=1e-5, rtol=1e-5)


def test_a_pretrained_variant_reloads_as_itself_and_refuses_export(tmp_path, monkeypatch):
    monkeypatch.setenv("MINLLAMA_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the fox {i % 7} jumps over dog {i % 5}.\n" for i in range(200)), encoding="utf-8")
    out = tmp_path / "run"
    assert run_llama.main(["--option", "pretrain", "--corpus", str(corpus), "--tokenizer", "char", "--dim", "32",
                           "--n_layers", "2", "--n_heads", "4", "--max_seq_len", "16", "--batch_size", "4",
                           "--max_steps", "4", "--eval_every", "2", "--eval_batches", "1", "--positional", "alibi",
                           "--ffn", "gelu", "--out_dir", str(out)]) == 0
    model = load_pretrained(out / "best.pt")
    assert model.config.architecture_changes() == {"positional": "alibi", "ffn": "gelu"}
    assert isinstance(model.layers[0].attention, UnrotatedAttention)
    assert isinstance(model.layers[0].feed_forward, GeluFeedForward)
    with pytest.raises(ExportError, match="positional alibi, ffn gelu"):
        export(out / "best.pt", tmp_path / "model.bin", "llama2c")
    assert not (tmp_path / "model.bin").exists()


@pytest.mark.parametrize("argv, message", [
    (["--option", "finetune", "--ffn", "gelu"], "they are for --option pretrain"),
    (["--option", "pretrain", "--corpus", "c.txt", "--max_steps", "1", "--pretrained-model-path", "x.pt",
      "--positional", "alibi"], "continued pre-training keeps the checkpoint's shape"),
    (["--option", "pretrain", "--corpus", "c.txt", "--max_steps", "1", "--positional", "sinusoidal"],
     "invalid choice: 'sinusoidal'"),
])
def test_bad_ablation_flags_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit):
        run_llama.get_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("changes, message", [
    ({"attention": "differential", "positional": "alibi"}, "built with rotary embeddings"),
    ({"attention": "differential", "n_heads": 6, "n_kv_heads": 3, "dim": 48}, "must be even"),
    ({"ffn": "relu"}, "ffn must be one of swiglu, gelu"),
])
def test_configs_that_make_no_model_are_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)
