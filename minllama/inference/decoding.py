"""
Two more ways to shape the next-token distribution, applied to the logits before
`sample_next_token` sees them (its own filters, epsilon, top-k and top-p, are the students'):

- min-p sampling (Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling for Creative and
  Coherent LLM Outputs", Sec. 3): keep the tokens whose probability is at least min_p times the
  most likely token's. The cut follows the model's confidence: a peaked distribution keeps a few
  tokens, a flat one many, which top-p's fixed mass and top-k's fixed count do not.
- repetition penalty (Keskar et al. 2019, CTRL, Sec. 4.1): the logit of every token already in
  the context is divided by the penalty (> 1), discouraging loops. A negative logit is multiplied
  instead, so that the penalty always makes the token less likely.

`logits_filters(model, ...)` applies them to whatever `model.generate` (or any forward call)
computes inside a `with` block, through hooks on the model, without touching generate's code:

    with logits_filters(model, temperature=1.0, min_p=0.1, repetition_penalty=1.3):
        tokens = model.generate(prompt, max_new_tokens=75, temperature=1.0, epsilon=0.0)
"""

import math
from contextlib import contextmanager

import torch


def min_p_filter(logits: torch.Tensor, min_p: float, temperature: float = 1.0) -> torch.Tensor:
    """(B, V) logits with -inf where softmax(logits / temperature) < min_p * its maximum.
    In logits: keep l >= max(l) + temperature * log(min_p). Temperature 0 (greedy) is unchanged."""
    if not 0.0 < min_p <= 1.0:
        raise ValueError(f"min_p must be in (0, 1], got {min_p}")
    if temperature == 0.0:
        return logits
    threshold = logits.max(dim=-1, keepdim=True).values + temperature * math.log(min_p)
    return logits.masked_fill(logits < threshold, float("-inf"))


def penalise_repetitions(logits: torch.Tensor, context: torch.Tensor, penalty: float,
                       context_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) logits with every token of context (B, S) (where context_mask is 1) penalised:
    l / penalty if l > 0, l * penalty otherwise."""
    if penalty <= 0:
        raise ValueError(f"the repetition penalty must be positive, got {penalty}")
    weights = torch.ones_like(context, dtype=logits.dtype) if context_mask is None else context_mask.to(logits.dtype)
    seen = torch.zeros_like(logits).scatter_add_(1, context, weights) > 0  # (B, V)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


@contextmanager
def logits_filters(model, temperature: float = 1.0, min_p: float | None = None,
                   repetition_penalty: float | None = None):
    """Within the block, the last-position logits of `model` (a Llama) go through the repetition
    penalty (over the tokens it has been given: the prompt, then each new token through the KV
    cache; pads excluded) and then the min-p filter. Nothing is registered when both are None."""
    if min_p is None and repetition_penalty is None:
        yield
        return
    if min_p is not None and not 0.0 < min_p <= 1.0:  # bad values fail here, before any generation
        raise ValueError(f"min_p must be in (0, 1], got {min_p}")
    if repetition_penalty is not None and repetition_penalty <= 0:
        raise ValueError(f"the repetition penalty must be positive, got {repetition_penalty}")
    seen = {"tokens": None, "mask": None}

    def record(module, args, kwargs):
        tokens = args[0]
        mask, cache = kwargs.get("attention_mask"), kwargs.get("kv_cache")
        mask = torch.ones_like(tokens) if mask is None else mask[:, -tokens.shape[1]:]
        if cache is None or cache[0].length == 0 or seen["tokens"] is None:  # a new (or re-encoded) window
            seen["tokens"], seen["mask"] = tokens, mask
        else:
            seen["tokens"] = torch.cat([seen["tokens"], tokens], dim=1)
            seen["mask"] = torch.cat([seen["mask"], mask], dim=1)

    def shape(module, inputs, logits):  # logits (B, T, V): only the last position is sampled from
        last = logits[:, -1, :]
        if repetition_penalty is not None:
            last = penalise_repetitions(last, seen["tokens"], repetition_penalty, seen["mask"])
        if min_p is not None:
            last = min_p_filter(last, min_p, temperature)
        return torch.cat([logits[:, :-1], last[:, None]], dim=1)

    handles = [model.register_forward_pre_hook(record, with_kwargs=True), model.output.register_forward_hook(shape)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
