"""Tests for the model in llama.py, each piece against an independent reference: norms against
PyTorch's, attention against F.scaled_dot_product_attention and a per-head loop written here,
GQA against an equivalent multi-head attention, padded batches against single sequences,
the key/value cache against full forwards. Tiny random models on the CPU: a few seconds."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import llama
from config import LlamaConfig
from llama import Attention, FeedForward, LayerNorm, Llama, LlamaLayer, RMSNorm

BASE = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=24, hidden_dim=48)
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


def tiny_llama(**overrides) -> Llama:
    """A random Llama in eval mode with weights large enough (std 0.3, norm weights and biases
    around 1) that outputs depend strongly on every token and position: the 0.02 init gives
    near-uniform logits that would hide mistakes."""
    model = Llama(LlamaConfig(**{**BASE, **overrides})).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
            else:
                param.uniform_(0.5, 1.5)
    return model


def same_weights_other_attention(model: Llama, fused: bool) -> Llama:
    """A copy of `model` that computes attention the other way (fused or explicit)."""
    other = Llama(LlamaConfig(**{**model.config.to_dict(), "fused_attention": fused})).eval()
    other.load_state_dict(model.state_dict())
    return other


def all_positions(model: Llama, tokens: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, T, V), hidden (B, T, dim)): passing targets asks forward for every position."""
    with torch.no_grad():
        return model(tokens, targets=tokens, **kwargs)


def random_tokens(*shape: int) -> torch.Tensor:
    return torch.randint(1, BASE["vocab_size"], shape)


# ---------------------------------------------------------------------------------------------
# Normalisation


@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_rmsnorm_matches_torch_rmsnorm(eps):
    """Reference: torch.nn.RMSNorm with the same eps and weight (eps 0.1 is large enough to matter)."""
    norm, reference = RMSNorm(16, eps=eps), nn.RMSNorm(16, eps=eps)
    with torch.no_grad():
        norm.weight.normal_()
        reference.weight.copy_(norm.weight)
    x = 0.3 * torch.randn(3, 5, 16)
    torch.testing.assert_close(norm(x), reference(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_layernorm_matches_functional_layer_norm(eps):
    """Reference: F.layer_norm (biased variance) with a random weight and bias."""
    norm = LayerNorm(16, eps=eps)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = 0.3 * torch.randn(3, 5, 16) + 2.0
    torch.testing.assert_close(norm(x), F.layer_norm(x, (16,), norm.weight, norm.bias, eps), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("norm_class, reference", [
    (RMSNorm, lambda x, norm: F.rms_norm(x, (x.shape[-1],), norm.weight.float(), norm.eps)),
    (LayerNorm, lambda x, norm: F.layer_norm(x, (x.shape[-1],), norm.weight.float(), norm.bias.float(), norm.eps)),
])
def test_norms_compute_in_float32_and_return_the_input_dtype(norm_class, reference):
    """Reference: PyTorch's norm on the float32 upcast. The input sits at a large offset
    (100 + noise), where a bf16 mean or variance would lose the noise entirely."""
    norm = norm_class(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        if norm_class is LayerNorm:
            norm.bias.normal_()
    norm = norm.to(torch.bfloat16)
    x = (100.0 + torch.randn(4, 64)).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: the only error allowed is the final rounding (and the weight's).
    torch.testing.assert_close(out.float(), reference(x.float(), norm), atol=3e-2, rtol=2e-2)


# ---------------------------------------------------------------------------------------------
# Attention scores: compute_query_key_value_scores


def naive_causal_attention(query, key, value):
    """softmax(q.k / sqrt(d)) v, one query at a time; the queries are the last T of the S keys."""
    batch, heads, n_queries, head_dim = query.shape
    n_keys = key.shape[2]
    out = torch.zeros_like(query)
    for b in range(batch):
        for h in range(heads):
            for t in range(n_queries):
                visible = n_keys - n_queries + t + 1
                scores = torch.tensor([query[b, h, t].dot(key[b, h, s]) / math.sqrt(head_dim) for s in range(visible)])
                weights = scores.exp() / scores.exp().sum()
                out[b, h, t] = sum(weights[s] * value[b, h, s] for s in range(visible))
    return out


def test_attention_scores_match_sdpa_is_causal():
    """Reference: F.scaled_dot_product_attention(is_causal=True)."""
    attention = Attention(LlamaConfig(**BASE)).eval()
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    torch.testing.assert_close(attention.compute_query_key_value_scores(q, k, v),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("n_queries, n_keys", [(6, 6), (1, 6), (3, 7)])
def test_attention_scores_match_naive_loop(n_queries, n_keys):
    """Reference: a per-head, per-query loop; T < S is decoding against a key/value cache."""
    attention = Attention(LlamaConfig(**BASE)).eval()
    q = torch.randn(2, 4, n_queries, 8)
    k, v = torch.randn(2, 2, 4, n_keys, 8).unbind(0)
    torch.testing.assert_close(attention.compute_query_key_value_scores(q, k, v), naive_causal_attention(q, k, v),
                               atol=ATOL, rtol=1e-4)


def test_attention_scores_apply_a_given_mask():
    """Reference: F.scaled_dot_product_attention with the same boolean attn_mask."""
    attention = Attention(LlamaConfig(**BASE)).eval()
    q, k, v = torch.randn(3, 2, 4, 6, 8).unbind(0)
    mask = torch.rand(2, 1, 6, 6) < 0.6
    mask |= torch.eye(6, dtype=torch.bool)  # every query sees at least one key
    torch.testing.assert_close(attention.compute_query_key_value_scores(q, k, v, mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=ATOL, rtol=1e-4)


def test_attention_probabilities_go_through_attn_dropout():
    """Reference: the contract that the scores use self.attn_dropout, seen through a spy module
    that receives rows of probabilities (non-negative, summing to 1)."""
    seen = []

    class Spy(nn.Module):
        def forward(self, probabilities):
            seen.append(probabilities)
            return probabilities

    attention = Attention(LlamaConfig(**BASE)).eval()
    attention.attn_dropout = Spy()
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)
    attention.compute_query_key_value_scores(q, k, v)
    assert len(seen) == 1 and seen[0].shape == (2, 4, 5, 5)
    assert (seen[0] >= 0).all()
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(2, 4, 5))


# ---------------------------------------------------------------------------------------------
# The attention layer: projections, RoPE, grouped-query heads


def reference_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE in the complex form of Su et al. (2021) in float64: pair (x[2i], x[2i+1]) at position
    p is the complex number x[2i] + i x[2i+1] multiplied by exp(i p theta^(-2i/d))."""
    seq_len, head_dim = x.shape[1], x.shape[-1]
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64),
                         theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    pairs = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())  # (B, T, H, d/2)
    rotated = pairs * torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    return torch.view_as_real(rotated).flatten(-2).float()


def reference_attention(attention: Attention, x: torch.Tensor, theta: float) -> torch.Tensor:
    """The attention layer from its weights: F.linear projections, complex RoPE, and SDPA's own
    grouped-query support (enable_gqa), which pairs kv head j with query heads j*n_rep..(j+1)*n_rep-1."""
    batch, seq_len, _ = x.shape
    head_dim = attention.head_dim
    q = F.linear(x, attention.compute_query.weight).view(batch, seq_len, -1, head_dim)
    k = F.linear(x, attention.compute_key.weight).view(batch, seq_len, -1, head_dim)
    v = F.linear(x, attention.compute_value.weight).view(batch, seq_len, -1, head_dim)
    q, k = reference_rope(q, theta), reference_rope(k, theta)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True, enable_gqa=True)
    return F.linear(out.transpose(1, 2).reshape(batch, seq_len, -1), attention.compute_output.weight)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_attention_layer_matches_reference(n_kv_heads, fused):
    """Reference: projections + complex-number RoPE + SDPA(enable_gqa) written in this file."""
    config = LlamaConfig(**{**BASE, "n_kv_heads": n_kv_heads, "fused_attention": fused, "rope_theta": 500.0})
    attention = Attention(config).eval()
    x = torch.randn(2, 9, config.dim)
    with torch.no_grad():
        torch.testing.assert_close(attention(x), reference_attention(attention, x, 500.0), atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_gqa_equals_mha_with_kv_heads_repeated_per_group(n_kv_heads, fused):
    """Reference: a multi-head Attention whose key/value weights give query head h the GQA kv
    head h // n_rep, built head by head here: kv head j serves query heads j*n_rep..(j+1)*n_rep-1."""
    gqa = Attention(LlamaConfig(**{**BASE, "n_kv_heads": n_kv_heads, "fused_attention": fused})).eval()
    mha = Attention(LlamaConfig(**{**BASE, "n_kv_heads": BASE["n_heads"], "fused_attention": fused})).eval()
    n_heads, n_rep, head_dim = BASE["n_heads"], BASE["n_heads"] // n_kv_heads, gqa.head_dim
    with torch.no_grad():
        mha.compute_query.weight.copy_(gqa.compute_query.weight)
        mha.compute_output.weight.copy_(gqa.compute_output.weight)
        for name in ("compute_key", "compute_value"):
            kv_heads = getattr(gqa, name).weight.split(head_dim)  # n_kv_heads blocks of (head_dim, dim)
            getattr(mha, name).weight.copy_(torch.cat([kv_heads[h // n_rep] for h in range(n_heads)]))
        x = torch.randn(2, 7, BASE["dim"])
        torch.testing.assert_close(gqa(x), mha(x), atol=ATOL, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Feed-forward network and the transformer block


def test_feed_forward_is_swiglu():
    """Reference: w2(silu(w1 x) * w3 x) written with F.linear and x * sigmoid(x)."""
    ffn = FeedForward(LlamaConfig(**BASE)).eval()
    x = torch.randn(2, 5, BASE["dim"])
    a, b = F.linear(x, ffn.w1.weight), F.linear(x, ffn.w3.weight)
    expected = F.linear(a * torch.sigmoid(a) * b, ffn.w2.weight)
    with torch.no_grad():
        assert ffn.SwiGLU(x).shape == (2, 5, BASE["hidden_dim"])
        torch.testing.assert_close(ffn(x), expected, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("overrides, hidden", [(dict(dim=512, n_heads=8), 1376), (dict(hidden_dim=40), 40)])
def test_feed_forward_hidden_size(overrides, hidden):
    """Reference: DESIGN.md's rule (1376 for dim 512) and an explicit hidden_dim."""
    config = LlamaConfig(**{**BASE, "hidden_dim": None, **overrides})
    ffn = FeedForward(config)
    assert ffn.w1.weight.shape == ffn.w3.weight.shape == (hidden, config.dim)
    assert ffn.w2.weight.shape == (config.dim, hidden)


@pytest.mark.parametrize("norm_type", ["rmsnorm", "layernorm"])
def test_layer_is_pre_norm_residual(norm_type):
    """Reference: h = x + attn(norm1(x)); out = h + ffn(norm2(h)) with the norms computed by
    F.rms_norm / F.layer_norm from the layer's own (distinct, random) norm weights."""
    layer = LlamaLayer(0, LlamaConfig(**{**BASE, "norm_type": norm_type})).eval()
    with torch.no_grad():
        for param in list(layer.attention_norm.parameters()) + list(layer.ffn_norm.parameters()):
            param.uniform_(0.5, 1.5)

    def norm(x, module):
        if norm_type == "rmsnorm":
            return F.rms_norm(x, (BASE["dim"],), module.weight, module.eps)
        return F.layer_norm(x, (BASE["dim"],), module.weight, module.bias, module.eps)

    x = torch.randn(2, 6, BASE["dim"])
    with torch.no_grad():
        h = x + layer.attention(norm(x, layer.attention_norm))
        expected = h + layer.feed_forward(norm(h, layer.ffn_norm))
        torch.testing.assert_close(layer(x), expected, atol=ATOL, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# The whole model: shapes, weights, dropout


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("batch, seq_len, dim, n_heads, n_kv_heads", [
    (1, 1, 32, 4, 4),    # MHA, a single token
    (2, 7, 32, 4, 2),    # GQA
    (3, 16, 64, 8, 1),   # MQA
    (2, 24, 64, 2, 2),   # the full context, head_dim 32
    (4, 5, 48, 6, 3),    # GQA, head_dim 8, n_rep 2
])
def test_forward_shapes(batch, seq_len, dim, n_heads, n_kv_heads, fused):
    """Reference: the contract shapes, (B, 1, V) without targets, (B, T, V) with, hidden (B, T, dim);
    and the last position's logits agree between the two calls and with hidden @ embeddings^T (tied)."""
    model = tiny_llama(dim=dim, n_heads=n_heads, n_kv_heads=n_kv_heads, fused_attention=fused)
    tokens = random_tokens(batch, seq_len)
    with torch.no_grad():
        last, hidden = model(tokens)
        every, hidden_with_targets = model(tokens, targets=tokens)
    vocab = BASE["vocab_size"]
    assert last.shape == (batch, 1, vocab) and every.shape == (batch, seq_len, vocab)
    assert hidden.shape == hidden_with_targets.shape == (batch, seq_len, dim)
    assert last.dtype == every.dtype == hidden.dtype == torch.float32
    torch.testing.assert_close(last, every[:, -1:], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(every, hidden @ model.tok_embeddings.weight.T, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("fused", [True, False])
def test_forward_preserves_bfloat16(fused):
    """Reference: the model's dtype; bf16 logits within a relative L2 error of 6% of the float32
    model's (about 2% is typical for these large random weights)."""
    model = tiny_llama(fused_attention=fused)
    tokens = random_tokens(2, 8)
    logits32, _ = all_positions(model, tokens)
    logits16, hidden16 = all_positions(model.to(torch.bfloat16), tokens)
    assert logits16.dtype == hidden16.dtype == torch.bfloat16
    assert (logits16.float() - logits32).norm() < 0.06 * logits32.norm()


def test_output_is_tied_to_embeddings():
    """Reference: object identity, kept through load_state_dict; untied when the config says so."""
    model = tiny_llama()
    assert model.output.weight is model.tok_embeddings.weight
    copy = tiny_llama()
    copy.load_state_dict(model.state_dict())
    assert copy.output.weight is copy.tok_embeddings.weight
    torch.testing.assert_close(copy.tok_embeddings.weight, model.output.weight, atol=0, rtol=0)
    untied = Llama(LlamaConfig(**{**BASE, "tie_word_embeddings": False}))
    assert untied.output.weight is not untied.tok_embeddings.weight


def test_residual_projections_have_scaled_init():
    """Reference: sample standard deviations over big matrices: 0.02/sqrt(2*n_layers) for
    compute_output and w2 (the residual projections), 0.02 for everything else, w3 included."""
    n_layers = 4
    model = Llama(LlamaConfig(**{**BASE, "dim": 64, "n_heads": 4, "n_layers": n_layers, "hidden_dim": 256}))

    def std_of(suffix):
        return torch.cat([p.flatten() for name, p in model.named_parameters() if name.endswith(suffix)]).std().item()

    scaled = 0.02 / math.sqrt(2 * n_layers)
    for suffix, expected in [("compute_output.weight", scaled), ("w2.weight", scaled), ("w3.weight", 0.02),
                             ("w1.weight", 0.02), ("compute_query.weight", 0.02), ("compute_value.weight", 0.02),
                             ("tok_embeddings.weight", 0.02)]:
        assert std_of(suffix) == pytest.approx(expected, rel=0.05), suffix


def test_dropout_is_off_in_eval_mode():
    """Reference: the same weights with dropout 0; in train mode dropout 0.5 must change the output."""
    model = tiny_llama(dropout=0.5)
    no_dropout = tiny_llama(dropout=0.0)
    no_dropout.load_state_dict(model.state_dict())
    tokens = random_tokens(2, 10)
    torch.testing.assert_close(all_positions(model, tokens)[0], all_positions(no_dropout, tokens)[0],
                               atol=ATOL, rtol=1e-4)
    model.train()
    assert not torch.allclose(all_positions(model, tokens)[0], all_positions(no_dropout, tokens)[0], atol=1e-3)


@pytest.mark.parametrize("fused", [True, False])
def test_no_mask_equals_all_ones_mask(fused):
    """Reference: the upstream contract, a forward without a mask attends every position,
    exactly as an all-ones mask does (pad ids included)."""
    model = tiny_llama(fused_attention=fused)
    tokens = torch.cat([random_tokens(2, 5), torch.zeros(2, 3, dtype=torch.long)], dim=1)  # right-padded with 0
    logits, hidden = all_positions(model, tokens)
    masked_logits, masked_hidden = all_positions(model, tokens, attention_mask=torch.ones_like(tokens))
    torch.testing.assert_close(logits, masked_logits, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(hidden, masked_hidden, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("norm_type", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_fused_attention_equals_explicit(n_kv_heads, norm_type):
    """Reference: the explicit softmax path (fused_attention=False) with the same weights, on
    plain, right-padded and left-padded batches."""
    fused = tiny_llama(n_kv_heads=n_kv_heads, norm_type=norm_type, fused_attention=True)
    explicit = same_weights_other_attention(fused, fused=False)
    tokens = random_tokens(3, 9)
    masks = [None,
             torch.tensor([[1] * 9, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7]),
             torch.tensor([[1] * 9, [0] * 4 + [1] * 5, [0] * 9])]
    for mask in masks:
        for a, b in zip(all_positions(fused, tokens, attention_mask=mask),
                        all_positions(explicit, tokens, attention_mask=mask)):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


def test_sequence_longer_than_max_seq_len_is_an_error():
    """Reference: the contract; RoPE tables stop at max_seq_len. A cache cannot be overfilled either."""
    model = tiny_llama()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(random_tokens(1, BASE["max_seq_len"] + 1))
    cache = model.new_kv_cache(1)
    with torch.no_grad():
        model(random_tokens(1, BASE["max_seq_len"] - 2), kv_cache=cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(random_tokens(1, 3), kv_cache=cache)


# ---------------------------------------------------------------------------------------------
# The key/value cache


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_cached_forward_equals_full_forward(n_kv_heads, fused):
    """Reference: one full forward over the whole sequence; the cached run feeds a 6-token
    prefix, then single tokens (T=1 against S keys), then a 3-token chunk against the cache."""
    model = tiny_llama(n_kv_heads=n_kv_heads, fused_attention=fused)
    tokens = random_tokens(2, 12)
    expected_logits, expected_hidden = all_positions(model, tokens)
    cache = model.new_kv_cache(2)
    pieces = [(0, 6), (6, 7), (7, 8), (8, 11), (11, 12)]
    for start, end in pieces:
        logits, hidden = all_positions(model, tokens[:, start:end], kv_cache=cache)
        torch.testing.assert_close(logits, expected_logits[:, start:end], atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(hidden, expected_hidden[:, start:end], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("fused", [True, False])
def test_cached_forward_with_left_padding_equals_full_forward(fused):
    """Reference: one full masked forward; the cached run passes the mask of every position so far."""
    model = tiny_llama(fused_attention=fused)
    tokens = random_tokens(2, 10)
    mask = torch.tensor([[1] * 10, [0] * 3 + [1] * 7])
    expected_logits, _ = all_positions(model, tokens, attention_mask=mask)
    cache = model.new_kv_cache(2)
    for start, end in [(0, 5), (5, 6), (6, 9), (9, 10)]:
        logits, _ = all_positions(model, tokens[:, start:end], attention_mask=mask[:, :end], kv_cache=cache)
        torch.testing.assert_close(logits, expected_logits[:, start:end], atol=ATOL, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Padding masks


SEQUENCE_LENGTHS = [9, 5, 1]


def padded_batch(sequences, side):
    """Pad with id 0 to the longest sequence on the given side; mask 1 = real token."""
    length = max(len(s) for s in sequences)
    rows, masks = [], []
    for s in sequences:
        pad = torch.zeros(length - len(s), dtype=torch.long)
        rows.append(torch.cat([s, pad]) if side == "right" else torch.cat([pad, s]))
        ones, zeros = torch.ones(len(s), dtype=torch.long), torch.zeros(length - len(s), dtype=torch.long)
        masks.append(torch.cat([ones, zeros]) if side == "right" else torch.cat([zeros, ones]))
    return torch.stack(rows), torch.stack(masks)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("norm_type", ["rmsnorm", "layernorm"])
def test_padded_batch_equals_single_sequences(side, fused, norm_type):
    """Reference: each sequence alone, unpadded, without a mask; compared at its real positions."""
    model = tiny_llama(fused_attention=fused, norm_type=norm_type)
    sequences = [random_tokens(n) for n in SEQUENCE_LENGTHS]
    tokens, mask = padded_batch(sequences, side)
    logits, hidden = all_positions(model, tokens, attention_mask=mask)
    assert torch.isfinite(logits).all() and torch.isfinite(hidden).all()
    for row, sequence in enumerate(sequences):
        alone_logits, alone_hidden = all_positions(model, sequence[None])
        real = mask[row].bool()
        torch.testing.assert_close(logits[row, real], alone_logits[0], atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(hidden[row, real], alone_hidden[0], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("fused", [True, False])
def test_left_padding_gives_real_tokens_positions_from_zero(fused, monkeypatch):
    """Reference: the positions an unpadded sequence has (0..n-1), seen by a spy on the RoPE call,
    also in cached decoding; and the logits at real positions equal the unpadded ones. (RoPE is
    relative, so a uniform shift of positions would not show in the logits alone.)"""
    positions_seen = []

    def spy(query, key, head_dim, max_seq_len, theta=10000.0, positions=None):
        positions_seen.append(positions)
        return real_rope(query, key, head_dim, max_seq_len, theta, positions)

    real_rope = llama.apply_rotary_emb
    monkeypatch.setattr(llama, "apply_rotary_emb", spy)
    model = tiny_llama(fused_attention=fused)
    sequence = random_tokens(6)
    tokens, mask = padded_batch([random_tokens(10), sequence], "left")
    logits, _ = all_positions(model, tokens, attention_mask=mask)
    assert positions_seen[-1][1, 4:].tolist() == list(range(6))
    torch.testing.assert_close(logits[1, 4:], all_positions(model, sequence[None])[0][0], atol=ATOL, rtol=1e-4)

    cache = model.new_kv_cache(2)
    all_positions(model, tokens, attention_mask=mask, kv_cache=cache)
    next_token = random_tokens(2, 1)
    all_positions(model, next_token, attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
                  kv_cache=cache)
    assert positions_seen[-1].flatten().tolist() == [10, 6]


@pytest.mark.parametrize("fused", [True, False])
def test_fully_padded_rows_are_finite(fused):
    """Reference: torch.isfinite; a row with no real token (and left-padding queries that see
    no real key) must not produce NaN, and must not disturb its batch-mates."""
    model = tiny_llama(fused_attention=fused)
    tokens = random_tokens(3, 7)
    mask = torch.tensor([[0] * 7, [0] * 5 + [1] * 2, [1] * 7])
    logits, hidden = all_positions(model, tokens, attention_mask=mask)
    assert torch.isfinite(logits).all() and torch.isfinite(hidden).all()
    torch.testing.assert_close(logits[1, 5:], all_positions(model, tokens[1:2, 5:])[0][0], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(logits[2], all_positions(model, tokens[2:])[0][0], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("fused", [True, False])
def test_padded_row_is_independent_of_batch_mates(fused):
    """Reference: the same padded row in a batch with different companions, all positions
    (pad positions included)."""
    model = tiny_llama(fused_attention=fused)
    row, row_mask = padded_batch([random_tokens(4), random_tokens(8)], "left")
    results = []
    for _ in range(2):
        mates = random_tokens(2, 8)
        mates_mask = torch.tensor([[1] * 8, [0] * 3 + [1] * 5])
        tokens, mask = torch.cat([row[:1], mates]), torch.cat([row_mask[:1], mates_mask])
        results.append(all_positions(model, tokens, attention_mask=mask))
    for first, second in zip(*results):
        torch.testing.assert_close(first[0], second[0], atol=1e-6, rtol=1e-5)
