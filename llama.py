"""Llama 2 (Touvron et al. 2023) in plain PyTorch.

A decoder-only transformer: token embeddings, n_layers pre-norm blocks of grouped-query
attention with rotary positions and a SwiGLU feed-forward network, a final norm, and a
projection back to the vocabulary that shares its weights with the embeddings.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from base_llama import LlamaPreTrainedModel
from config import LlamaConfig
from rope import apply_rotary_emb
from support.rope_scaling import rope_base


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight.

    LayerNorm without centring and without a bias: cheaper, and what Llama was trained with."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) divided by the root of (the mean of its squares over the last axis + eps).
        forward calls it in float32 and applies the weight."""
        # BEGIN SOLUTION
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32: a bf16 mean of squares loses too much precision.
        return self._norm(x.float()).type_as(x) * self.weight


class LayerNorm(nn.Module):
    """Layer normalisation (Ba et al. 2016): (x - mean) / sqrt(var + eps) * weight + bias,
    with the biased variance (divide by dim, not dim - 1), as F.layer_norm computes it."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) centred on its mean over the last axis, divided by sqrt(variance + eps),
        the variance biased (the mean of squared deviations). forward applies weight and bias."""
        # BEGIN SOLUTION
        mean = x.mean(-1, keepdim=True)
        variance = (x - mean).pow(2).mean(-1, keepdim=True)
        return (x - mean) * torch.rsqrt(variance + self.eps)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x.float()).type_as(x) * self.weight + self.bias


def make_norm(config: LlamaConfig) -> nn.Module:
    """The normalisation the config names; nothing in a checkpoint tells them apart."""
    norm = RMSNorm if config.norm_type == "rmsnorm" else LayerNorm
    return norm(config.dim, eps=config.layer_norm_eps)


def causal_mask(n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    """(n_queries, n_keys) booleans, True where a query may attend to a key.

    The queries are the last n_queries of the n_keys positions (with a key/value cache,
    the keys also hold the earlier tokens), so query i sees keys 0 .. n_keys - n_queries + i."""
    ones = torch.ones(n_queries, n_keys, dtype=torch.bool, device=device)
    return ones.tril(diagonal=n_keys - n_queries)


class KVCache:
    """The keys and values one attention layer has computed so far, so that generating a new
    token costs one position's work instead of re-running the whole prefix.

    Buffers are allocated once for `max_len` positions and filled in place; they are left
    uninitialised (only the first `length` positions are ever read), which saves zero-filling
    megabytes of memory that generation never looks at."""

    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0  # positions filled

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, n_kv_heads, T, head_dim) new keys/values; return all of them so far."""
        start, end = self.length, self.length + keys.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"KV cache holds {self.keys.shape[2]} positions, {end} were needed")
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def repeat_interleave(self, repeats: int) -> None:
        """Give every batch row `repeats` consecutive copies (row b becomes rows b*repeats ..
        b*repeats + repeats-1), e.g. to continue one encoded prompt in several ways."""
        self.keys = self.keys.repeat_interleave(repeats, dim=0)
        self.values = self.values.repeat_interleave(repeats, dim=0)


class Attention(nn.Module):
    """Causal multi-head self-attention (Vaswani et al. 2017, Sec. 3.2) with grouped-query
    attention (GQA; Ainslie et al. 2023): n_heads query heads share n_kv_heads key/value
    heads, each kv head serving n_rep = n_heads / n_kv_heads consecutive query heads.
    n_kv_heads == n_heads is plain multi-head attention, n_kv_heads == 1 multi-query."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.n_rep = self.n_heads // self.n_kv_heads
        self.head_dim = config.head_dim
        self.max_seq_len = config.max_seq_len
        self.rope_theta = rope_base(config.rope_theta, config.rope_scaling)  # a ScaledTheta for Llama 3
        self.fused = config.fused_attention

        self.compute_query = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.compute_key = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.compute_value = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.compute_output = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)

        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def compute_query_key_value_scores(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                       mask: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(Q K^T / sqrt(head_dim)) V for query (B, n_heads, T, head_dim) and key, value
        (B, n_heads, S, head_dim); returns (B, n_heads, T, head_dim).

        Dividing by sqrt(head_dim) keeps the dot products at unit variance, so the softmax
        does not saturate (Vaswani et al. 2017, Sec. 3.2.1). `mask` (broadcastable to
        (B, n_heads, T, S)) is True where attention is allowed; None means causal: with a KV
        cache the T queries are the last of the S positions, so take causal_mask(T, S). A score
        that is not allowed becomes -inf before the softmax, which is computed in float32 (and
        cast back). The probabilities then go through self.attn_dropout before weighting V.
        """
        # BEGIN SOLUTION
        if mask is None:
            mask = causal_mask(query.shape[2], key.shape[2], device=query.device)
        scores = query @ key.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, n_heads, T, S)
        scores = scores.masked_fill(~mask, float("-inf"))
        probabilities = F.softmax(scores.float(), dim=-1).type_as(query)
        probabilities = self.attn_dropout(probabilities)
        return probabilities @ value
        # END SOLUTION

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        """x (B, T, dim) -> (B, T, dim): every token gathers information from the tokens before it.

        1. Project x to queries (n_heads heads) and keys and values (n_kv_heads heads each), as
           (B, T, heads, head_dim), and rotate queries and keys with apply_rotary_emb at
           `positions` (None: 0..T-1; Llama.forward passes (T,) positions after a KV cache's, or
           (B, T) per-row positions for a padded batch).
        2. Move the heads in front, (B, heads, T, head_dim). With `kv_cache`, append the new keys
           and values to it and attend to everything it holds (S >= T positions).
        3. Grouped-query attention: repeat each key/value head n_rep times with repeat_interleave
           on the head axis, so kv head j serves query heads j*n_rep .. (j+1)*n_rep - 1.
        4. Attend, with `mask` (from Llama.forward; None: causal): through the fused kernel when
           self.fused (config.fused_attention, the default), else through
           compute_query_key_value_scores.
        5. Put the heads back side by side, (B, T, n_heads * head_dim), project with
           compute_output, and apply self.resid_dropout.
        """
        # BEGIN SOLUTION
        batch_size, seq_len, _ = x.shape
        query = self.compute_query(x).view(batch_size, seq_len, self.n_heads, self.head_dim)
        key = self.compute_key(x).view(batch_size, seq_len, self.n_kv_heads, self.head_dim)
        value = self.compute_value(x).view(batch_size, seq_len, self.n_kv_heads, self.head_dim)
        query, key = apply_rotary_emb(query, key, self.head_dim, self.max_seq_len, self.rope_theta, positions)

        # (B, heads, T, head_dim): every head attends independently.
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        if kv_cache is not None:
            key, value = kv_cache.append(key, value)  # (B, n_kv_heads, S, head_dim), S >= T
        if self.n_rep > 1:
            key = key.repeat_interleave(self.n_rep, dim=1)
            value = value.repeat_interleave(self.n_rep, dim=1)

        if self.fused:
            output = self._fused_attention(query, key, value, mask)
        else:
            output = self.compute_query_key_value_scores(query, key, value, mask)
        output = output.transpose(1, 2).reshape(batch_size, seq_len, self.n_heads * self.head_dim)
        return self.resid_dropout(self.compute_output(output))
        # END SOLUTION

    def _fused_attention(self, query, key, value, mask):
        """The same computation through PyTorch's fused kernel (flash/memory-efficient
        attention where the hardware has them): no (T, S) score matrix in memory."""
        n_queries, n_keys = query.shape[2], key.shape[2]
        is_causal = mask is None and n_queries == n_keys
        if mask is None and 1 < n_queries < n_keys:
            mask = causal_mask(n_queries, n_keys, device=query.device)
        # (A single new query with no padding may see every cached key: no mask at all.)
        dropout = self.attn_dropout.p if self.training else 0.0
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                              dropout_p=dropout, is_causal=is_causal)


class FeedForward(nn.Module):
    """The position-wise network with a SwiGLU gate (Shazeer 2020): w2(silu(w1 x) * w3 x).
    w1 x decides, through the smooth SiLU gate, how much of each w3 x feature passes."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        hidden_dim = config.ffn_hidden_dim
        self.w1 = nn.Linear(config.dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, config.dim, bias=False)
        self.w3 = nn.Linear(config.dim, hidden_dim, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def SwiGLU(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T, hidden_dim): silu(w1 x) * w3 x, the gated features that forward
        projects back with w2."""
        # BEGIN SOLUTION
        return F.silu(self.w1(x)) * self.w3(x)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(self.SwiGLU(x)))


# The pre-training ablations (minllama/pretraining/architectures.py) put their layer builders here
# when they are imported, {"attention": (layer_id, config) -> module, "ffn": config -> module}:
# Llama 2's own layers need nothing of them, and the model never imports the package above it.
ABLATED_LAYERS: dict = {}


def make_attention(layer_id: int, config: LlamaConfig) -> nn.Module:
    """Llama 2's attention, or the pre-training ablation the config names."""
    if not {"positional", "attention"} & set(config.architecture_changes()):
        return Attention(config)
    return _ablated_layer("attention", config)(layer_id, config)


def make_feed_forward(config: LlamaConfig) -> nn.Module:
    if config.ffn == "swiglu":
        return FeedForward(config)
    return _ablated_layer("ffn", config)(config)


def _ablated_layer(kind: str, config: LlamaConfig):
    if kind not in ABLATED_LAYERS:
        raise ValueError(f"this model is a pre-training ablation ({config.architecture_changes()}): its layers "
                         "are built by minllama.pretraining.architectures, which this copy of the code has not "
                         "imported (or does not have)")
    return ABLATED_LAYERS[kind]


class LlamaLayer(nn.Module):
    """One pre-norm transformer block (Xiong et al. 2020): normalise, transform, add back.

    h = x + attention(norm(x)); out = h + feed_forward(norm(h)). The residual stream itself
    is never normalised, which keeps gradients flowing through deep stacks."""

    def __init__(self, layer_id: int, config: LlamaConfig):
        super().__init__()
        self.layer_id = layer_id
        self.attention = make_attention(layer_id, config)
        self.feed_forward = make_feed_forward(config)
        self.attention_norm = make_norm(config)
        self.ffn_norm = make_norm(config)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        """x (B, T, dim) -> (B, T, dim): h = x + attention(attention_norm(x)), then
        h + feed_forward(ffn_norm(h)). positions, mask and kv_cache are the attention's (this
        layer's own cache): hand them on."""
        # BEGIN SOLUTION
        h = x + self.attention(self.attention_norm(x), positions, mask, kv_cache)
        return h + self.feed_forward(self.ffn_norm(h))
        # END SOLUTION


def padding_aware_mask(attention_mask: torch.Tensor, n_queries: int) -> torch.Tensor:
    """Combine causality with a (B, S) padding mask (1 = real token) into (B, 1, T, S) booleans.

    A padding position must not be attended to. A padding *query* (left padding) would then
    see no key at all and its softmax would be 0/0 = NaN, so every token may always see
    itself: pad rows stay finite and real rows are unchanged (they see themselves anyway)."""
    n_keys = attention_mask.shape[1]
    device = attention_mask.device
    itself = torch.zeros(n_queries, n_keys, dtype=torch.bool, device=device)
    itself[torch.arange(n_queries), torch.arange(n_keys - n_queries, n_keys)] = True
    allowed = causal_mask(n_queries, n_keys, device=device) & attention_mask[:, None, None, :].bool()
    return allowed | itself


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, epsilon: float = 0.05,
                      top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Pick the next token (B, 1) from the last position's logits (B, V).

    temperature 0 is greedy (argmax). Otherwise p = softmax(logits / temperature): a low
    temperature sharpens p, a high one flattens it. Three optional filters then cut the
    unlikely tail, which is where incoherent continuations come from:
    epsilon sampling drops tokens with p < epsilon (Hewitt et al. 2022), top_k keeps the k
    most likely, top_p keeps the smallest set whose mass reaches top_p (Holtzman et al. 2020).
    The most likely token always survives, and what is left is renormalised and sampled
    (torch.multinomial). A top_k below 1 or a top_p outside (0, 1] is a ValueError.
    """
    # BEGIN SOLUTION
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    probabilities = F.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    keep = torch.ones_like(probabilities, dtype=torch.bool)
    if epsilon > 0:
        keep &= probabilities >= epsilon
    if top_k is not None:
        kth_largest = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1).values[:, -1:]
        keep &= probabilities >= kth_largest
    if top_p is not None:
        sorted_probs, order = probabilities.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
        keep &= torch.zeros_like(keep).scatter(-1, order, mass_before < top_p)
    keep |= probabilities == probabilities.max(dim=-1, keepdim=True).values
    probabilities = probabilities * keep
    return torch.multinomial(probabilities / probabilities.sum(-1, keepdim=True), num_samples=1)
    # END SOLUTION


class Llama(LlamaPreTrainedModel):
    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        # An empty table (`_weight`): init_weights draws it, so nn.Embedding need not draw it first.
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim,
                                           _weight=torch.empty(config.vocab_size, config.dim))
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(LlamaLayer(i, config) for i in range(config.n_layers))
        self.norm = make_norm(config)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            # One matrix both reads tokens in and scores them out (Press & Wolf 2017).
            self.tok_embeddings.weight = self.output.weight
        self.init_weights()

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> list[KVCache]:
        """One empty KVCache per layer, for up to `max_len` (default max_seq_len) positions."""
        config = self.config
        max_len = max_len or config.max_seq_len
        return [KVCache(batch_size, config.n_kv_heads, max_len, config.head_dim, self.dtype, self.device)
                for _ in range(config.n_layers)]

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, kv_cache: list[KVCache] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T) -> (logits, hidden_states).

        hidden_states (B, T, dim) are the final-norm outputs. With targets, logits are (B, T, V)
        for every position; without, (B, 1, V) for the last one only, which is all generation needs.
        attention_mask (B, S) marks real tokens with 1 and padding with 0 (S = T, or with a
        kv_cache the cached positions plus T); it makes padded batches give the same results
        as unpadded sequences. Without it every token is attended to, as upstream.
        kv_cache (one KVCache per layer, from new_kv_cache) holds the keys and values of the
        tokens seen before: `tokens` continue them.

        1. past = the positions already in the cache (0 without one); more than max_seq_len
           positions in all is a ValueError (RoPE has no angle for them).
        2. Positions and mask: without attention_mask, positions past .. past + T - 1 and no
           mask (the attention is causal). With it, a token's position counts the real tokens
           before it in its row (so left padding shifts nothing; the last T of them), and the
           mask is padding_aware_mask(attention_mask, T), which keeps pad rows finite.
        3. Embed, apply self.dropout, run every layer (with its own cache), apply the final
           norm; the logits are self.output of all positions, or of the last one.
        """
        # BEGIN SOLUTION
        batch_size, seq_len = tokens.shape
        past = kv_cache[0].length if kv_cache is not None else 0
        if past + seq_len > self.config.max_seq_len:
            raise ValueError(f"{past + seq_len} positions exceed max_seq_len {self.config.max_seq_len}: "
                             "truncate the input first")
        if attention_mask is None:
            positions, mask = torch.arange(past, past + seq_len, device=tokens.device), None
        else:
            # A token's position counts only the real tokens before it: left padding shifts nothing.
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]
            mask = padding_aware_mask(attention_mask, seq_len)

        h = self.dropout(self.tok_embeddings(tokens))  # (B, T, dim)
        for i, layer in enumerate(self.layers):
            h = layer(h, positions, mask, kv_cache[i] if kv_cache is not None else None)
        h = self.norm(h)
        logits = self.output(h if targets is not None else h[:, [-1], :])
        return logits, h
        # END SOLUTION

    @torch.no_grad()  # not inference_mode: generated tokens may feed a later training step
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, epsilon: float = 0.05,
                 top_k: int | None = None, top_p: float | None = None, stop_tokens=None,
                 attention_mask: torch.Tensor | None = None, use_cache: bool = True) -> torch.Tensor:
        """Continue the prompts idx (B, T) by up to max_new_tokens tokens; returns (B, T + n).

        Sampling: see sample_next_token. The model sees at most the last max_seq_len tokens.
        A batch of prompts of different lengths is left-padded, with attention_mask marking
        the real tokens. Generation stops early only when every row has produced one of
        `stop_tokens` (off by default: TinyStories models end a story with BOS, not EOS);
        a row that stopped repeats its stop token until the others finish.
        With use_cache the keys and values of the prefix are kept (KVCache), so each new token
        costs one position's work; the tokens are the same as without it.

        Every step runs the model on the context (the last max_seq_len tokens and their part of
        the mask) and picks the next token with sample_next_token(last position's logits,
        temperature, epsilon, top_k, top_p). With the cache, the first step (or one where the
        window has slid past max_seq_len, which restarts the positions) encodes the whole
        window into a fresh cache, new_kv_cache; the other steps feed only the newest token.
        """
        # BEGIN SOLUTION
        batch_size, prompt_len = idx.shape
        total_len = prompt_len + max_new_tokens
        max_seq_len = self.config.max_seq_len
        # The output is allocated once and filled in place (no growing torch.cat every step).
        tokens = idx.new_empty(batch_size, total_len)
        tokens[:, :prompt_len] = idx
        if attention_mask is not None:
            mask = attention_mask.new_ones(batch_size, total_len)  # generated tokens are real
            mask[:, :prompt_len] = attention_mask
        if stop_tokens is not None:
            stop_tokens = torch.tensor(list(stop_tokens), dtype=idx.dtype, device=idx.device)
            finished = torch.zeros(batch_size, dtype=torch.bool, device=idx.device)
        kv_cache = None
        for end in range(prompt_len, total_len):  # tokens[:, :end] are known, tokens[:, end] is next
            start = max(0, end - max_seq_len)
            window = tokens[:, start:end]
            window_mask = mask[:, start:end] if attention_mask is not None else None
            if not use_cache:
                logits, _ = self(window, attention_mask=window_mask)
            elif kv_cache is None or start > 0:
                # First step, or the context slid past max_seq_len (positions restart): encode the window.
                kv_cache = self.new_kv_cache(batch_size, min(total_len, max_seq_len))
                logits, _ = self(window, attention_mask=window_mask, kv_cache=kv_cache)
            else:
                logits, _ = self(window[:, -1:], attention_mask=window_mask, kv_cache=kv_cache)
            next_token = sample_next_token(logits[:, -1, :], temperature, epsilon, top_k, top_p)[:, 0]
            if stop_tokens is not None:
                next_token = torch.where(finished, tokens[:, end - 1], next_token)
                finished |= torch.isin(next_token, stop_tokens)
            tokens[:, end] = next_token
            if stop_tokens is not None and finished.all():
                return tokens[:, :end + 1]
        return tokens
        # END SOLUTION


def load_pretrained(checkpoint, **config_overrides) -> Llama:
    """Build a Llama from a checkpoint file: a llama2.c/course `.pt`, a llama2.c `.bin` export,
    or a GGUF file (see checkpoints.py), in eval mode, on the CPU, in float32.

    `config_overrides` set what a file cannot tell, e.g. norm_type="layernorm" or dropout.
    Loading is strict: a missing, unexpected or mis-shaped tensor is an error naming it."""
    from support.checkpoints import load_state_dict_strict, read_checkpoint

    model_args, state_dict = read_checkpoint(checkpoint)
    config = LlamaConfig.from_dict({**model_args, **config_overrides})
    with torch.device("meta"):  # no memory and no random initialisation: every weight comes from the file
        model = Llama(config)
    load_state_dict_strict(model, state_dict, checkpoint)
    return model.eval()
