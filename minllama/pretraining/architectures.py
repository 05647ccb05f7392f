"""Three ablations of Llama 2's design, for pre-training from scratch (`--option pretrain`).

Each replaces one choice of the model and keeps the rest, so a run that changes one flag
measures what that choice buys (README: TinyShakespeare validation loss by variant):

- `--positional alibi` (Press et al. 2022, "Train Short, Test Long", Sec. 3): no rotation of
  queries and keys; instead every head subtracts slope * distance from its attention scores, a
  linear penalty on how far back a key is, with one fixed slope per head (a geometric sequence,
  so some heads look far and others near).
- `--positional none` (NoPE; Kazemnejad et al. 2023): no positional signal at all. A causal
  decoder can still tell positions apart, since a token at position p averages over p+1 tokens.
- `--ffn gelu` (Vaswani et al. 2017, Sec. 3.3; GELU from Hendrycks and Gimpel 2016): the
  two-matrix w2(gelu(w1 x)) instead of SwiGLU's gate, with the hidden size 3/2 of SwiGLU's so both
  have the same number of parameters (Shazeer 2020, Sec. 2).
- `--attention differential` (Ye et al. 2024, "Differential Transformer", Sec. 2.1): every head
  computes two softmax maps from two halves of its queries and keys and subtracts one, scaled
  by a learned lambda, from the other, cancelling the attention both give to irrelevant tokens.

The default of each flag is Llama 2's. Importing this module hands its layers to llama.py
(llama.ABLATED_LAYERS), whose make_attention and make_feed_forward build them only for a config
that asks for them: the model never imports the package above it, and a plain Llama needs none of this.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import LlamaConfig
from llama import ABLATED_LAYERS, Attention, KVCache, RMSNorm, causal_mask
from rope import apply_rotary_emb


def ablated_attention(layer_id: int, config: LlamaConfig) -> Attention:
    if config.attention == "differential":
        return DifferentialAttention(layer_id, config)
    return UnrotatedAttention(config)


def project_heads(attention: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, T, dim) -> query (B, T, n_heads, head_dim), key and value (B, T, n_kv_heads, head_dim):
    Attention's projections, which every variant here keeps."""
    batch_size, seq_len, _ = x.shape
    return (attention.compute_query(x).view(batch_size, seq_len, attention.n_heads, attention.head_dim),
            attention.compute_key(x).view(batch_size, seq_len, attention.n_kv_heads, attention.head_dim),
            attention.compute_value(x).view(batch_size, seq_len, attention.n_kv_heads, attention.head_dim))


def merge_heads(attention: Attention, output: torch.Tensor) -> torch.Tensor:
    """output (B, heads, T, width), heads * width = dim -> (B, T, dim) through compute_output."""
    batch_size, _, seq_len, _ = output.shape
    output = output.transpose(1, 2).reshape(batch_size, seq_len, attention.n_heads * attention.head_dim)
    return attention.resid_dropout(attention.compute_output(output))


def alibi_slopes(n_heads: int) -> tuple[float, ...]:
    """ALiBi's slope of every head (Press et al. 2022, Sec. 3): for 2^k heads the geometric
    sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8); for other counts, the slopes of the largest power
    of two below n_heads, then every other slope of the next power of two up."""
    def geometric(n: int) -> list[float]:
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    below = 2 ** math.floor(math.log2(n_heads))
    return tuple(geometric(below) + geometric(2 * below)[0::2][: n_heads - below])


class UnrotatedAttention(Attention):
    """Attention without rotary embeddings: position enters through ALiBi's linear distance
    penalty (config.positional "alibi") or not at all ("none"). Same projections as Attention."""

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        # Fixed numbers, not weights: kept out of the state dict (and off the meta device).
        self.slopes = alibi_slopes(self.n_heads) if config.positional == "alibi" else None

    def distance_bias(self, mask: torch.Tensor | None, n_queries: int, n_keys: int,
                      dtype: torch.dtype, device) -> torch.Tensor | None:
        """The attention mask as an additive float bias, (n_heads, T, S) or (B, n_heads, T, S):
        -slope * (query index - key index) where attention is allowed, -inf elsewhere. The
        queries are the last T of the S positions; left padding moves a row's real tokens
        together, so index differences are distances between tokens. Without ALiBi: `mask`."""
        if self.slopes is None:
            return mask
        allowed = causal_mask(n_queries, n_keys, device) if mask is None else mask
        query_index = torch.arange(n_keys - n_queries, n_keys, device=device)
        distance = (query_index[:, None] - torch.arange(n_keys, device=device)).float()  # (T, S)
        bias = -torch.tensor(self.slopes, device=device)[:, None, None] * distance  # (n_heads, T, S)
        return torch.where(allowed, bias, float("-inf")).to(dtype)  # the mask may add a batch axis

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        """As Attention.forward without the rotation (`positions` is not needed: the bias
        works from the order of the keys)."""
        query, key, value = (t.transpose(1, 2) for t in project_heads(self, x))  # (B, heads, T, head_dim)
        if kv_cache is not None:
            key, value = kv_cache.append(key, value)  # (B, n_kv_heads, S, head_dim)
        if self.n_rep > 1:
            key = key.repeat_interleave(self.n_rep, dim=1)
            value = value.repeat_interleave(self.n_rep, dim=1)
        bias = self.distance_bias(mask, query.shape[2], key.shape[2], query.dtype, x.device)
        return merge_heads(self, self._fused_attention(query, key, value, bias))  # from (B, n_heads, T, head_dim)


class DifferentialAttention(Attention):
    """Differential attention (Ye et al. 2024, Sec. 2.1), with the parameters of Attention.

    The n_heads query and key heads of width d = head_dim pair up into n_heads / 2 differential
    heads, each with two query/key halves (Q1, K1), (Q2, K2) and a value of width 2d (the two
    value heads of the pair side by side):

        head = (softmax(Q1 K1^T / sqrt(d)) - lambda * softmax(Q2 K2^T / sqrt(d))) V

    lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init, from four learned vectors of width d
    shared by the layer's heads, and lambda_init = 0.8 - 0.6 exp(-0.3 * layer_id) (Eq. 2). Each
    head's output is normalised on its own (RMSNorm over 2d) and scaled by 1 - lambda_init, so
    the gradients match ordinary attention's at the start (Sec. 2.2). As the product with V is
    linear, a head is two fused attention calls on the same V: A1 V - lambda A2 V."""

    def __init__(self, layer_id: int, config: LlamaConfig):
        super().__init__(config)
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer_id)
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.randn(self.head_dim) * 0.1) for _ in range(4))
        self.head_norm = RMSNorm(2 * self.head_dim, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        query, key, value = project_heads(self, x)
        query, key = apply_rotary_emb(query, key, self.head_dim, self.max_seq_len, self.rope_theta, positions)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        if kv_cache is not None:
            key, value = kv_cache.append(key, value)  # (B, n_kv_heads, S, head_dim)
        batch_size, n_keys = key.shape[0], key.shape[2]
        # Head pairs (2j, 2j+1): the two halves of differential head j; values side by side.
        value = value.transpose(1, 2).reshape(batch_size, n_keys, self.n_kv_heads // 2, 2 * self.head_dim)
        value = value.transpose(1, 2)  # (B, n_kv_heads / 2, S, 2d)
        key1, key2 = key[:, 0::2], key[:, 1::2]  # (B, n_kv_heads / 2, S, d) each
        if self.n_rep > 1:
            key1, key2, value = (t.repeat_interleave(self.n_rep, dim=1) for t in (key1, key2, value))
        lam = (torch.exp(self.lambda_q1 @ self.lambda_k1) - torch.exp(self.lambda_q2 @ self.lambda_k2)
               + self.lambda_init)
        output = (self._fused_attention(query[:, 0::2], key1, value, mask)
                  - lam * self._fused_attention(query[:, 1::2], key2, value, mask))  # (B, n_heads / 2, T, 2d)
        return merge_heads(self, self.head_norm(output) * (1 - self.lambda_init))


class GeluFeedForward(nn.Module):
    """w2(gelu(w1 x)): the original transformer's feed-forward network with GELU, its hidden
    size 3/2 of SwiGLU's so the two matrices hold as many parameters as SwiGLU's three."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        hidden_dim = 3 * config.ffn_hidden_dim // 2
        self.w1 = nn.Linear(config.dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, config.dim, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.gelu(self.w1(x))))


ABLATED_LAYERS.update(attention=ablated_attention, ffn=GeluFeedForward)  # what llama.py builds from
