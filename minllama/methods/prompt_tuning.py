"""
Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
https://arxiv.org/abs/2104.08691).

A prompt is a few token embeddings in front of the input. Instead of searching for the best
words, prompt tuning learns the P embedding vectors themselves ("soft prompt", P x dim numbers)
by gradient descent, with the whole model frozen. Nothing inside the model changes: the same
frozen backbone serves every task, and a task is its P x dim matrix (for stories42M and P = 20,
10,240 numbers).

Initialisation matters at small scale (Sec. 3.2): starting from the embeddings of real tokens
(here by default the task's zero-shot question, repeated or cut to P tokens) works better than
random vectors, so `prompt_init_ids` gives either a text's tokens or random vocabulary tokens.

`PromptTunedLlama` wraps a Llama and behaves like one (forward, new_kv_cache, config, output):
it puts the P virtual tokens before every sequence and returns the hidden states of the real
tokens only, so the classifiers' pooling (the last real token) and padding masks work unchanged.
The P positions come out of the model's context, so a sentence has `context_budget(llama)`
positions left. Llama.forward takes token ids; the wrapper feeds it P placeholder ids and swaps
their embeddings for the learned ones (a forward hook on tok_embeddings, for the one call), so the
model's own positions, masks and KV cache are reused as they are.

    classifier = LlamaEmbeddingClassifier(config)
    apply_prompt_tuning(classifier, prompt_init_ids(tokenizer, 20, text=question))  # head keeps training
    ...train...
    torch.save(prompt_tuning_state_dict(classifier), "prompt.pt")
"""

import random
from typing import Sequence

import torch
import torch.nn as nn

from llama import KVCache, Llama
from support.adapters import ParameterCount, adapter_state_dict, count_parameters, load_adapter_state_dict

PREFIX = "prompt_embeddings"  # the name of the one trained tensor


def prompt_init_ids(tokenizer, n_virtual_tokens: int, text: str | None = None, seed: int = 0) -> list[int]:
    """The token ids whose embeddings start the soft prompt: `text`'s tokens repeated or cut to
    n_virtual_tokens, or, with text None, random vocabulary tokens drawn with `seed` (never BOS,
    EOS or pad: those mean something to the model)."""
    if n_virtual_tokens < 1:
        raise ValueError(f"n_virtual_tokens must be positive, got {n_virtual_tokens}")
    if text is not None:
        ids = tokenizer.encode(text, bos=False, eos=False)
        if not ids:
            raise ValueError(f"the prompt's initial text {text!r} has no tokens")
        return (ids * -(-n_virtual_tokens // len(ids)))[:n_virtual_tokens]
    special = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
    candidates = [i for i in range(tokenizer.n_words) if i not in special]
    return random.Random(seed).sample(candidates, n_virtual_tokens)


class PrefixedLlama(nn.Module):
    """What the wrappers that put positions before every sequence (a soft prompt here, a cached
    prefix in prompting.py) share: they read like a Llama to the classifiers (config, output,
    new_kv_cache), and their n_prefix_positions come out of the context (see context_budget)."""

    n_prefix_positions: int

    def __init__(self, llama: nn.Module):
        super().__init__()
        self.llama = llama

    @property
    def config(self):
        return self.llama.config

    @property
    def output(self) -> nn.Linear:
        return self.llama.output

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> list[KVCache]:
        """A cache for max_len input positions (default: all there is room for) plus the prefix."""
        max_len = max_len or context_budget(self)
        return self.llama.new_kv_cache(batch_size, max_len + self.n_prefix_positions)


def context_budget(llama: nn.Module) -> int:
    """Positions of the model's context left for the input: max_seq_len, less every prefix's."""
    budget = llama.config.max_seq_len
    while isinstance(llama, PrefixedLlama):
        budget, llama = budget - llama.n_prefix_positions, llama.llama
    return budget


class PromptTunedLlama(PrefixedLlama):
    """A frozen Llama with `prompt_embeddings` (P, dim) placed before every sequence."""

    def __init__(self, llama: Llama, init_ids: Sequence[int]):
        n_virtual_tokens = len(init_ids)
        if not 0 < n_virtual_tokens < llama.config.max_seq_len:
            raise ValueError(f"{n_virtual_tokens} virtual tokens leave no room for a sentence in the model's "
                             f"context of {llama.config.max_seq_len} positions")
        super().__init__(llama.requires_grad_(False))
        with torch.no_grad():
            self.prompt_embeddings = nn.Parameter(llama.tok_embeddings.weight[list(init_ids)].clone())  # (P, dim)

    @property
    def n_prefix_positions(self) -> int:
        return self.prompt_embeddings.shape[0]

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, kv_cache: list[KVCache] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """As Llama.forward, for the real tokens only: hidden states (B, T, dim), logits (B, T, V)
        with targets or (B, 1, V) without. A call that continues a filled kv_cache (the soft prompt
        is in it already) passes the tokens through; its attention_mask covers the real positions."""
        batch_size, n = tokens.shape[0], self.n_prefix_positions
        if attention_mask is not None:  # the virtual tokens are real: attended to, and counted in positions
            attention_mask = torch.cat([attention_mask.new_ones(batch_size, n), attention_mask], dim=1)
        if kv_cache is not None and kv_cache[0].length > 0:
            return self.llama(tokens, targets, attention_mask, kv_cache)

        placeholders = tokens.new_zeros(batch_size, n)  # any id: their embeddings are replaced
        handle = self.llama.tok_embeddings.register_forward_hook(self._insert_prompt)
        try:
            logits, hidden = self.llama(torch.cat([placeholders, tokens], dim=1), targets, attention_mask, kv_cache)
        finally:
            handle.remove()
        return (logits[:, n:] if targets is not None else logits), hidden[:, n:]

    def _insert_prompt(self, module, inputs, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, P + T, dim) embeddings of placeholders + tokens -> the soft prompt + the tokens'.

        The first P rows of every sequence are the placeholders' embeddings: replace them by
        self.prompt_embeddings (P, dim), the same for every row of the batch (expand, in the
        embeddings' dtype), and keep the tokens' own embeddings after them. Gradients reach the
        soft prompt through this concatenation; the frozen embedding table gets none."""
        # BEGIN SOLUTION
        prompt = self.prompt_embeddings.to(embeddings.dtype).expand(embeddings.shape[0], -1, -1)
        return torch.cat([prompt, embeddings[:, self.n_prefix_positions:]], dim=1)
        # END SOLUTION


def apply_prompt_tuning(classifier: nn.Module, init_ids: Sequence[int]) -> nn.Module:
    """Replace `classifier.llama` by a frozen PromptTunedLlama around it, with len(init_ids)
    virtual tokens initialised from those tokens' embeddings. The rest of the classifier (a head)
    keeps its requires_grad. Returns `classifier`."""
    if isinstance(classifier.llama, PromptTunedLlama):
        raise ValueError("apply_prompt_tuning: the classifier already has a soft prompt")
    classifier.llama = PromptTunedLlama(classifier.llama, init_ids)
    return classifier


def count_prompt_tuning_parameters(model: nn.Module) -> ParameterCount:
    """ParameterCount(adapter, trainable, total): the soft prompt, what trains, everything."""
    return count_parameters(model, PREFIX)


def prompt_tuning_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the soft prompt ({'llama.prompt_embeddings': (P, dim)} for a classifier), detached."""
    return adapter_state_dict(model, PREFIX, "apply_prompt_tuning")


def load_prompt_tuning_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Copy a saved soft prompt into a model prepared the same way; strict on names and shapes (P)."""
    return load_adapter_state_dict(model, state_dict, PREFIX, "apply_prompt_tuning")
