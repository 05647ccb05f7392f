"""Generation with less work per token around the weights (after gpt-fast's generate.py).

Decoding one token at batch 1 multiplies every weight matrix by one vector: the weights'
memory traffic is all that cannot be avoided. `Llama.generate` reaches about three quarters
of the speed of those products alone (bench/generate.py); the rest goes to the small
operations around them: norms, rotations, reshaping heads, the cache, the mask. Here one
decoding step is written out for the whole model, in the order the data flows, with few of them:

- the key/value cache (KVCache) is allocated once, written in place at one index and attended
  as a whole through a mask, so that every step has the same shapes;
- the rotary cos/sin come from one table, laid out so that rotating a pair is two products
  and a sum (`rotate`);
- the padding mask of a batch is built once; a step only hides the slots not yet written;
- grouped-query attention lets the fused kernel share the key/value heads (`enable_gqa`)
  instead of copying them n_rep times;
- linear layers reading the same input are multiplied as one matrix (q, k, v; and w1, w3),
  stored transposed, as the output layer is (TransposedLinear: a faster layout at batch 1);
- quantised layers (quantize.py) fuse as well, on their weight-only kernels.

Eager, on a CPU, the small operations cost little beside the products (each costs its pass
over memory more than its call): what counts is how the weights are read (their layout, their
bits). One shape for every step lets torch.compile (`DecodingStep(model, compile=True)`) fuse
the small operations into a few kernels on top (README, "Lower precision").

The prompt itself goes through `Llama.forward`, which fills the cache; every token after it
goes through `DecodingStep`. The tokens are those of `Llama.generate` for float32 and int8
weights (tests/test_fast_decode.py; bf16 sums, and int4 ones of a fused matrix, can round in
another order, which can flip a near-tie: on SmolLM2 int4 parted after about 14 tokens):
`generate` here has its arguments, and hands back to it whatever this path does not cover.
"""

import torch
import torch.nn.functional as F
from torch import nn

from llama import KVCache, Llama, RMSNorm, sample_next_token
from minllama.inference import quantize
from rope import precompute_freqs_cos_sin


def fusable(linears: list[nn.Module]) -> bool:
    """Whether fuse() takes these: all plain nn.Linear, or quantised layers of one kind that concatenate."""
    return all(type(m) is nn.Linear for m in linears) or quantize.fusable(linears)


class TransposedLinear(nn.Module):
    """A bias-free linear layer whose weight is stored transposed, (in, out), and multiplied as
    x @ weight_t. At batch 1 torch's CPU product streams a weight laid out so about 1.7x faster
    than nn.Linear's (out, in) one (x @ w.T): 25.8 against 14.8 GB/s on SmolLM2's output layer,
    one thread (speed issue); SmolLM2's eager float32 decoding gained about a fifth."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight_t", weight.detach().t().contiguous())  # (in, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight_t


def fuse(linears: list[nn.Module]) -> nn.Module:
    """One bias-free linear layer whose outputs are those of `linears` side by side: the input
    is read once, and one matrix product replaces several."""
    if not all(type(m) is nn.Linear for m in linears):
        return type(linears[0]).concat(linears)
    weight = torch.cat([m.weight.detach() for m in linears])
    if weight.dtype == torch.float32:
        return TransposedLinear(weight)
    # bfloat16: nn.Linear's own layout is the fast one (5x the transposed product on a CPU without bf16 units)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused


def rotary_table(model: Llama) -> torch.Tensor:
    """(max_seq_len, 2, head_dim): for every position, cos and a signed sin, each repeated for
    the two members of a pair, so that rotate() needs no splitting of pairs (see rotate)."""
    attention = model.layers[0].attention
    cos, sin = precompute_freqs_cos_sin(attention.head_dim, attention.max_seq_len, attention.rope_theta,
                                        model.device)  # (max_seq_len, head_dim // 2) each
    signed_sin = torch.stack((-sin, sin), dim=-1).flatten(-2)  # -sin for x[2i], +sin for x[2i+1]
    return torch.stack((cos.repeat_interleave(2, dim=-1), signed_sin), dim=1)


def rotate(x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """Rotate every pair (x[2i], x[2i+1]) of x (B, heads, head_dim) by its angle, as rope.py does:
    (x0 c - x1 s, x1 c + x0 s) = x * cos + swap(x) * signed_sin, swap exchanging each pair's
    members. cos_sin (B or 1, 2, head_dim) holds the rows of rotary_table at each row's position."""
    cos, signed_sin = cos_sin[:, None, 0], cos_sin[:, None, 1]  # (B or 1, 1, head_dim)
    rows = x.float()  # rotated in float32, as rope.py does, and cast back
    swapped = rows.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0) in every pair
    return (rows * cos + swapped * signed_sin).type_as(x)


class DecodingStep(nn.Module):
    """One new token per row through the whole model, on the caches Llama.forward filled.

    Built once per model (the fused weights are copies: the model itself is left unchanged).
    Every step has the same shapes (forward), so `compile` (torch.compile; it needs a C++
    compiler and takes tens of seconds) builds one graph that fuses the small operations."""

    def __init__(self, model: Llama, compile: bool = False):
        super().__init__()
        config = model.config
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.model = model
        self.qkv = nn.ModuleList(fuse([layer.attention.compute_query, layer.attention.compute_key,
                                       layer.attention.compute_value]) for layer in model.layers)
        self.gate_up = nn.ModuleList(fuse([layer.feed_forward.w1, layer.feed_forward.w3])
                                     for layer in model.layers)
        # the output layer, the largest matrix, as a transposed copy too (float32 weights; others stay)
        float_output = type(model.output) is nn.Linear and model.output.weight.dtype == torch.float32
        self.output = TransposedLinear(model.output.weight) if float_output else model.output
        self.register_buffer("rotary", rotary_table(model), persistent=False)
        # config.norm_type: every norm is of one kind. F.rms_norm is RMSNorm in one call, with the
        # same float32 result; other weights (bf16) and LayerNorm run the modules themselves.
        self.rms = isinstance(model.norm, RMSNorm) and model.dtype == torch.float32
        if compile:
            self.forward = torch.compile(self.forward, fullgraph=True)

    def norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps) if self.rms else norm(x)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor,
                kv_cache: list[KVCache], key_mask: torch.Tensor) -> torch.Tensor:
        """tokens (B,) at positions (B,) (or (1,), shared by the rows) -> logits (B, V).

        Every layer writes its new key and value at cache index `slot` (1,) and attends over the
        whole cache buffer (L positions) through key_mask (B or 1, 1, 1, L), True at the real
        tokens up to `slot`. Positions and slot are tensors and the buffers never change shape,
        so one step looks like every other (gpt-fast's static cache)."""
        n_q, n_kv, head_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.head_dim
        batch_size = tokens.shape[0]
        cos_sin = self.rotary[positions]  # (B or 1, 2, head_dim)
        h = self.model.tok_embeddings(tokens)  # (B, dim)
        for layer, qkv, gate_up, cache in zip(self.model.layers, self.qkv, self.gate_up, kv_cache):
            query, key, value = qkv(self.norm(layer.attention_norm, h)).split((n_q, n_kv, n_kv), dim=-1)
            query = rotate(query.view(batch_size, -1, head_dim), cos_sin)  # (B, n_heads, head_dim)
            key = rotate(key.view(batch_size, -1, head_dim), cos_sin)  # (B, n_kv_heads, head_dim)
            # (.to: under autocast the projections are bf16 and the cache is the model's dtype.)
            cache.keys.index_copy_(2, slot, key[:, :, None].to(cache.keys.dtype))
            cache.values.index_copy_(2, slot, value.view(batch_size, -1, 1, head_dim).to(cache.values.dtype))
            attended = F.scaled_dot_product_attention(
                query[:, :, None], cache.keys, cache.values,
                attn_mask=key_mask, enable_gqa=True)  # (B, n_heads, 1, head_dim); kv heads shared, not copied
            h = h + layer.attention.compute_output(attended.view(batch_size, n_q))
            gate, up = gate_up(self.norm(layer.ffn_norm, h)).chunk(2, dim=-1)
            h = h + layer.feed_forward.w2(F.silu(gate) * up)
        return self.output(self.norm(self.model.norm, h))  # (B, V)


def covers(model: Llama, total_len: int) -> bool:
    """Whether this path can decode: a Llama (not another model with its interface) in inference
    mode, whose window never slides (Llama.generate re-encodes the whole window at every step once
    it has; nothing is left to save there), of Llama 2's own architecture (not a pre-training ablation, architectures.py), whose projections
    fuse (plain or quantised linear layers, not e.g. LoRA-wrapped ones)."""
    if not isinstance(model, Llama) or model.training or total_len > model.config.max_seq_len or model.config.architecture_changes():
        return False
    groups = [[layer.attention.compute_query, layer.attention.compute_key, layer.attention.compute_value]
              for layer in model.layers] + [[layer.feed_forward.w1, layer.feed_forward.w3] for layer in model.layers]
    return all(map(fusable, groups))


@torch.no_grad()
def decoded_tokens(model: Llama, idx: torch.Tensor, max_new_tokens: int, step: DecodingStep,
                   attention_mask: torch.Tensor | None = None, **sampling):
    """Yield the next token of every row, (B,), up to max_new_tokens times: the prompt idx (B, T)
    goes once through Llama.forward into a cache sized for prompt and reply, every token after
    it through `step`. The caller stops early by not asking for more (generate's stop tokens, a
    chat reply's end). `sampling`: sample_next_token's temperature, epsilon, top_k, top_p."""
    batch_size, prompt_len = idx.shape
    total_len = prompt_len + max_new_tokens
    kv_cache = model.new_kv_cache(batch_size, total_len)
    for cache in kv_cache:  # the step attends over whole buffers (masked): no uninitialised NaN may hide there
        cache.keys.zero_()
        cache.values.zero_()
    logits, _ = model(idx, attention_mask=attention_mask, kv_cache=kv_cache)  # the prompt, at once
    logits = logits[:, -1]
    slots = torch.arange(total_len, device=idx.device)
    real = torch.ones(batch_size, 1, 1, total_len, dtype=torch.bool, device=idx.device)  # generated ones too
    if attention_mask is None:
        positions = slots[prompt_len:prompt_len + 1]  # (1,): every row at the same position
    else:
        real[:, 0, 0, :prompt_len] = attention_mask.bool()
        positions = attention_mask.sum(-1)  # (B,): the real tokens before the next one
    for end in range(prompt_len, total_len):  # the tokens before index `end` are known; the next goes there
        next_token = sample_next_token(logits, **sampling)[:, 0]
        yield next_token
        if end + 1 < total_len:
            logits = step(next_token, positions, slots[end:end + 1], kv_cache, real & (slots <= end))
            positions = positions + 1


def generate(model: Llama, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             epsilon: float = 0.05, top_k: int | None = None, top_p: float | None = None, stop_tokens=None,
             attention_mask: torch.Tensor | None = None, step: DecodingStep | None = None) -> torch.Tensor:
    """Llama.generate's tokens, faster: see the module docstring. `step` is a DecodingStep of
    `model` to reuse (building one copies the fused weights); a context that would slide past
    max_seq_len, or a model in training mode, goes through model.generate instead."""
    if not covers(model, idx.shape[1] + max_new_tokens) or max_new_tokens <= 0:
        return model.generate(idx, max_new_tokens, temperature, epsilon, top_k, top_p, stop_tokens, attention_mask)
    if stop_tokens is not None:
        stop_tokens = torch.tensor(list(stop_tokens), dtype=idx.dtype, device=idx.device)
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    columns = [idx]
    for next_token in decoded_tokens(model, idx, max_new_tokens, step or DecodingStep(model), attention_mask,
                                     temperature=temperature, epsilon=epsilon, top_k=top_k, top_p=top_p):
        if stop_tokens is not None:  # a finished row repeats its last token, as Llama.generate's rows do
            next_token = torch.where(finished, columns[-1][:, -1], next_token)
            finished |= torch.isin(next_token, stop_tokens)
        columns.append(next_token[:, None])
        if stop_tokens is not None and finished.all():
            break
    return torch.cat(columns, dim=1)
