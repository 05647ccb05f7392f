"""Checks of the model's pieces: the norms, RoPE, attention, the feed-forward network, the layer and
Llama.forward, including what the pipelines rely on (the KV cache, padding masks, per-row positions)."""

import pytest
import torch
import torch.nn.functional as F

import llama
from llama import Attention, FeedForward, KVCache, LayerNorm, LlamaLayer, RMSNorm, padding_aware_mask
from rope import apply_rotary_emb

LEFT_PADDED = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # attention_mask: row 0 has two pads in front


# ----------------------------------------------------------------------------- normalisation

def test_rmsnorm_matches_pytorch():
    torch.manual_seed(0)
    norm = RMSNorm(32, eps=1e-5)
    norm.weight.data.normal_()
    x = 3 * torch.randn(2, 5, 32)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (32,), norm.weight, eps=1e-5))


def test_layernorm_matches_pytorch():
    torch.manual_seed(0)
    norm = LayerNorm(32, eps=1e-5)
    norm.weight.data.normal_()
    norm.bias.data.normal_()
    x = 3 * torch.randn(2, 5, 32) + 1
    torch.testing.assert_close(norm(x), F.layer_norm(x, (32,), norm.weight, norm.bias, eps=1e-5))


# ----------------------------------------------------------------------------- rotary embeddings

def test_rope_matches_course_reference(reference_file):
    expected_query, expected_key = torch.load(reference_file("rotary_embedding_actual.data"), weights_only=True)
    query, key = apply_rotary_emb(2 * torch.ones(1, 2, 2, 4), 3 * torch.ones(1, 2, 2, 4), head_dim=4, max_seq_len=20)
    torch.testing.assert_close(query, expected_query)
    torch.testing.assert_close(key, expected_key)


def test_rope_rotates_pairs_by_relative_position():
    torch.manual_seed(0)
    query, key = torch.randn(1, 6, 2, 8), torch.randn(1, 6, 2, 8)
    rotated_query, rotated_key = apply_rotary_emb(query, key, head_dim=8, max_seq_len=16)
    assert rotated_query.shape == query.shape and rotated_key.shape == key.shape
    torch.testing.assert_close(rotated_query[:, 0], query[:, 0])  # position 0 is not rotated
    # A rotation keeps the length of every (x[2i], x[2i+1]) pair.
    pair_norm = lambda x: x.unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pair_norm(rotated_query), pair_norm(query))
    # The same query/key vectors at positions (m, n) and (m + s, n + s) give the same dot product.
    same_q, same_k = query[:, :1].expand(1, 6, 2, 8), key[:, :1].expand(1, 6, 2, 8)
    q, k = apply_rotary_emb(same_q.contiguous(), same_k.contiguous(), head_dim=8, max_seq_len=16)
    dots = (q[:, :, None] * k[:, None, :]).sum(-1)  # (1, 6 query positions, 6 key positions, heads)
    torch.testing.assert_close(dots[:, 3, 1], dots[:, 5, 3])
    torch.testing.assert_close(dots[:, 2, 2], dots[:, 4, 4])


def test_rope_takes_positions_shared_or_per_row():
    """`positions` (T,) continues a sequence (a KV cache step at position `past`); (B, T) gives every
    row its own (a left-padded row starts later). Keys may have fewer heads than queries (GQA)."""
    torch.manual_seed(0)
    query, key = torch.randn(2, 8, 4, 8), torch.randn(2, 8, 2, 8)
    whole_query, whole_key = apply_rotary_emb(query, key, head_dim=8, max_seq_len=16)  # positions 0..7

    later_query, later_key = apply_rotary_emb(query[:, 3:], key[:, 3:], 8, 16, positions=torch.arange(3, 8))
    torch.testing.assert_close(later_query, whole_query[:, 3:])
    torch.testing.assert_close(later_key, whole_key[:, 3:])

    rows = torch.tensor([[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]])
    row_query, row_key = apply_rotary_emb(torch.stack((query[0, :5], query[1, 3:])),
                                          torch.stack((key[0, :5], key[1, 3:])), 8, 16, positions=rows)
    torch.testing.assert_close(row_query, torch.stack((whole_query[0, :5], whole_query[1, 3:])))
    torch.testing.assert_close(row_key, torch.stack((whole_key[0, :5], whole_key[1, 3:])))


def test_rope_keeps_the_dtype():
    """Training on a GPU runs in bfloat16: the rotation is computed in float32 and cast back."""
    query, key = torch.randn(1, 3, 2, 8).bfloat16(), torch.randn(1, 3, 1, 8).bfloat16()
    rotated_query, rotated_key = apply_rotary_emb(query, key, head_dim=8, max_seq_len=16)
    assert rotated_query.dtype == rotated_key.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- attention

def test_attention_scores_match_pytorch(small_config):
    attention = Attention(small_config()).eval()
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 4, 7, 8) for _ in range(3))
    expected = F.scaled_dot_product_attention(query, key, value, is_causal=True)
    torch.testing.assert_close(attention.compute_query_key_value_scores(query, key, value), expected)


def test_attention_scores_take_a_mask_and_cached_keys(small_config):
    """3 new queries against 7 keys (4 of them cached): without a mask, query i sees keys 0 .. 4 + i
    (llama.causal_mask); a given boolean mask (True = may attend) replaces that."""
    attention = Attention(small_config()).eval()
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    causal = torch.ones(3, 7, dtype=torch.bool).tril(diagonal=4)
    torch.testing.assert_close(attention.compute_query_key_value_scores(query, key, value),
                               F.scaled_dot_product_attention(query, key, value, attn_mask=causal))
    mask = torch.rand(2, 1, 3, 7) < 0.5
    mask[..., -1] = True  # every query may see at least one key
    torch.testing.assert_close(attention.compute_query_key_value_scores(query, key, value, mask),
                               F.scaled_dot_product_attention(query, key, value, attn_mask=mask))


def test_attention_scores_apply_attn_dropout(small_config, zero_out):
    """Dropout acts on the attention probabilities, through self.attn_dropout."""
    attention = Attention(small_config()).train()
    attention.attn_dropout = zero_out()
    query, key, value = (torch.randn(1, 4, 5, 8) for _ in range(3))
    assert torch.equal(attention.compute_query_key_value_scores(query, key, value), torch.zeros(1, 4, 5, 8))


def reference_attention(attention: Attention, x: torch.Tensor) -> torch.Tensor:
    """Attention.forward written out with PyTorch's attention, positions 0..T-1, causal."""
    config_heads, kv_heads, head_dim = attention.n_heads, attention.n_kv_heads, attention.head_dim
    B, T, _ = x.shape
    query = attention.compute_query(x).view(B, T, config_heads, head_dim)
    key = attention.compute_key(x).view(B, T, kv_heads, head_dim)
    value = attention.compute_value(x).view(B, T, kv_heads, head_dim)
    query, key = apply_rotary_emb(query, key, head_dim, attention.max_seq_len)
    # kv head j serves query heads j*n_rep ... (j+1)*n_rep - 1
    key, value = key.repeat_interleave(attention.n_rep, dim=2), value.repeat_interleave(attention.n_rep, dim=2)
    mixed = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                           is_causal=True)
    return attention.compute_output(mixed.transpose(1, 2).reshape(B, T, config_heads * head_dim))


@pytest.mark.parametrize("fused", [True, False])
def test_attention_forward_matches_reference(small_config, fused):
    torch.manual_seed(0)
    attention = Attention(small_config(fused_attention=fused)).eval()
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(attention(x), reference_attention(attention, x))


def test_unfused_attention_forward_uses_compute_query_key_value_scores(small_config):
    """With fused_attention=False the scores are yours: Attention.forward must go through them."""
    attention = Attention(small_config(fused_attention=False)).eval()
    attention.compute_query_key_value_scores = lambda query, key, value, mask=None: torch.zeros_like(query)
    assert torch.equal(attention(torch.randn(2, 5, 32)), torch.zeros(2, 5, 32))


def test_attention_forward_applies_resid_dropout(small_config, zero_out):
    attention = Attention(small_config()).train()
    attention.resid_dropout = zero_out()
    assert torch.equal(attention(torch.randn(2, 5, 32)), torch.zeros(2, 5, 32))


@pytest.mark.parametrize("fused", [True, False])
def test_attention_forward_with_a_kv_cache(small_config, fused):
    """4 tokens, then 3 more with the keys and values of the first 4 in the cache (and their
    positions 4..6 given): the same outputs as all 7 at once."""
    torch.manual_seed(0)
    attention = Attention(small_config(fused_attention=fused)).eval()
    x = torch.randn(2, 7, 32)
    cache = KVCache(2, attention.n_kv_heads, 16, attention.head_dim, torch.float32, torch.device("cpu"))
    first = attention(x[:, :4], positions=torch.arange(4), kv_cache=cache)
    rest = attention(x[:, 4:], positions=torch.arange(4, 7), kv_cache=cache)
    assert cache.length == 7
    torch.testing.assert_close(torch.cat((first, rest), dim=1), reference_attention(attention, x))


@pytest.mark.parametrize("fused", [True, False])
def test_attention_forward_with_a_padding_mask(small_config, fused):
    """A left-padded row, with the mask Llama.forward builds (padding_aware_mask) and its positions:
    its real tokens attend to no pad, so they come out as for the row alone; the pads stay finite."""
    torch.manual_seed(0)
    attention = Attention(small_config(fused_attention=fused)).eval()
    x = torch.randn(2, 5, 32)
    positions = (LEFT_PADDED.cumsum(-1) - 1).clamp(min=0)
    out = attention(x, positions=positions, mask=padding_aware_mask(LEFT_PADDED, 5))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 2:], reference_attention(attention, x[:1, 2:])[0])
    torch.testing.assert_close(out[1], reference_attention(attention, x[1:])[0])


# ----------------------------------------------------------------------------- feed-forward, layer

def test_swiglu(small_config):
    torch.manual_seed(0)
    ffn = FeedForward(small_config()).eval()
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(ffn.SwiGLU(x), F.silu(ffn.w1(x)) * ffn.w3(x))
    torch.testing.assert_close(ffn(x), ffn.w2(F.silu(ffn.w1(x)) * ffn.w3(x)))


def test_layer_is_two_pre_norm_residual_blocks(small_config):
    torch.manual_seed(0)
    layer = LlamaLayer(0, small_config()).eval()
    for norm in (layer.attention_norm, layer.ffn_norm):
        norm.weight.data.normal_()  # so that forgetting a norm shows
    x = torch.randn(2, 6, 32)
    h = x + layer.attention(layer.attention_norm(x))
    torch.testing.assert_close(layer(x), h + layer.feed_forward(layer.ffn_norm(h)))


def test_layer_is_given_positions_mask_and_cache_for_its_attention(small_config):
    """LlamaLayer.forward hands positions, mask and kv_cache on to its attention."""
    torch.manual_seed(0)
    config = small_config()
    layer = LlamaLayer(0, config).eval()
    prefix, x = torch.randn(2, 3, 32), torch.randn(2, 2, 32)
    attention_mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions, mask = torch.tensor([[2, 3], [3, 4]]), padding_aware_mask(attention_mask, 2)

    def cache_after_prefix() -> KVCache:
        cache = KVCache(2, config.n_kv_heads, 16, config.head_dim, torch.float32, torch.device("cpu"))
        layer.attention(prefix, kv_cache=cache)
        return cache

    h = x + layer.attention(layer.attention_norm(x), positions, mask, cache_after_prefix())
    expected = h + layer.feed_forward(layer.ffn_norm(h))
    torch.testing.assert_close(layer(x, positions, mask, cache_after_prefix()), expected)


# ----------------------------------------------------------------------------- the model

def test_model_forward_runs_embedding_layers_norm_output(small_model):
    model = small_model()
    tokens = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    h = model.tok_embeddings(tokens)
    for layer in model.layers:
        h = layer(h)
    h = model.norm(h)

    logits, hidden_states = model(tokens, targets=tokens)
    assert logits.shape == (2, 9, 96) and hidden_states.shape == (2, 9, 32)
    torch.testing.assert_close(hidden_states, h)
    torch.testing.assert_close(logits, model.output(h))

    last_logits, _ = model(tokens)  # without targets: the last position only
    assert last_logits.shape == (2, 1, 96)
    torch.testing.assert_close(last_logits, model.output(h[:, -1:]))


@pytest.mark.parametrize("fused", [True, False])
def test_model_forward_with_a_padding_mask_matches_each_row_alone(small_model, fused):
    """attention_mask (1 = token, 0 = pad): a left-padded row gives, at its real tokens, what the
    row alone gives, and its pad positions stay finite (each pad may see itself: no 0/0)."""
    model = small_model(fused_attention=fused)
    tokens = torch.randint(1, 96, (2, 5), generator=torch.Generator().manual_seed(0))
    _, hidden = model(tokens, attention_mask=LEFT_PADDED)
    assert torch.isfinite(hidden).all()
    _, alone = model(tokens[:1, 2:])
    torch.testing.assert_close(hidden[0, 2:], alone[0])
    _, full_row = model(tokens[1:])
    torch.testing.assert_close(hidden[1], full_row[0])


def test_model_forward_counts_positions_from_each_rows_first_token(small_model, monkeypatch):
    """A left-padded row's real tokens are at positions 0, 1, 2, ... (its pads shift nothing), also
    in a cached step, where the mask covers the cached positions and the new one."""
    model = small_model(n_layers=1)
    seen = []

    def recording_rope(query, key, head_dim, max_seq_len, theta=10000.0, positions=None):
        seen.append(positions)
        return apply_rotary_emb(query, key, head_dim, max_seq_len, theta, positions)

    monkeypatch.setattr(llama, "apply_rotary_emb", recording_rope)
    tokens = torch.randint(1, 96, (2, 5), generator=torch.Generator().manual_seed(0))
    cache = model.new_kv_cache(2)
    model(tokens, attention_mask=LEFT_PADDED, kv_cache=cache)
    real = LEFT_PADDED.bool()
    assert seen[0] is not None
    assert torch.equal(seen[0].expand(2, 5)[real], torch.tensor([0, 1, 2, 0, 1, 2, 3, 4]))
    next_mask = torch.cat((LEFT_PADDED, torch.ones(2, 1, dtype=torch.long)), dim=1)
    model(tokens[:, :1], attention_mask=next_mask, kv_cache=cache)
    assert torch.equal(seen[1].expand(2, 1), torch.tensor([[3], [5]]))


@pytest.mark.parametrize("padded", [False, True])
def test_model_forward_with_a_kv_cache_matches_the_whole_sequence(small_model, padded):
    """Prefill 5 tokens into the cache, then one more: the last logits of the whole 6 tokens."""
    model = small_model()
    tokens = torch.randint(1, 96, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.cat((LEFT_PADDED, torch.ones(2, 1, dtype=torch.long)), dim=1) if padded else None
    expected, _ = model(tokens, attention_mask=mask)
    cache = model.new_kv_cache(2)
    model(tokens[:, :5], attention_mask=mask[:, :5] if padded else None, kv_cache=cache)
    logits, _ = model(tokens[:, 5:], attention_mask=mask, kv_cache=cache)
    assert cache[0].length == 6
    torch.testing.assert_close(logits, expected)


def test_model_forward_refuses_more_positions_than_max_seq_len(small_model):
    model = small_model()
    tokens = torch.randint(1, 96, (1, 17))  # max_seq_len is 16
    with pytest.raises(ValueError, match="max_seq_len"):
        model(tokens, attention_mask=torch.ones_like(tokens))


def test_model_forward_applies_its_embedding_dropout(small_model, zero_out):
    """self.dropout acts on the token embeddings: zeroing them zeroes everything after."""
    model = small_model().train()
    model.dropout = zero_out()
    _, hidden = model(torch.randint(0, 96, (2, 5)))
    assert torch.equal(hidden, torch.zeros(2, 5, 32))
