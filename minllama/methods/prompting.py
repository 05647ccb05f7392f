"""
Zero-shot classification, generalised: any prompt, demonstrations, calibration, and training.

A prompt here has three token pieces: a prefix (BOS, a chat template's opening, K solved
demonstrations), the sentence, and a suffix (the question, or a chat template's turn change);
each label's words are scored as the continuation of the suffix (classifier.score_continuations).

- K-shot prompting (Brown et al. 2020, Sec. 2): the prefix holds K training sentences with their
  answers, balanced over the labels and drawn with a seed (`draw_demonstrations`). The prefix is
  the same for every sentence, so `PrefixCachedLlama` runs it once and every batch starts from a
  copy of its keys and values: K = 8 costs little more than K = 0.
- Contextual calibration (Zhao et al. 2021, "Calibrate Before Use", Sec. 4): a prompt prefers some
  labels whatever the sentence. Measure that preference on content-free inputs ("N/A", "",
  "[MASK]"), p_cf = the mean of their label distributions, and divide it out:
  q(label) = p(label) / p_cf(label), renormalised (`CalibratedClassifier`).
- Prompt-based fine-tuning (LM-BFF, Gao et al. 2021, Sec. 4; PET, Schick and Schuetze 2021):
  `PromptClassifier` is the zero-shot scoring with gradients on. Its output is the gold label's
  share of the label words' probability, log p(y) - log sum_l p(l), so the usual classification
  NLL trains the model to put the label words' mass on the right word, with the language-model
  head as the classifier (no new parameters). Train the whole backbone, or LoRA/IA3 on
  `classifier.llama`.

A chat template plugs in through `PromptTemplate(prefix_text, suffix_text, label_prefix)`.
"""

import random
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from classifier import continuation_ids, label_table, score_continuations, zero_shot_question
from llama import KVCache
from minllama.methods.prompt_tuning import PrefixedLlama

CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")  # Zhao et al. 2021, Sec. 4


@dataclass(frozen=True)
class PromptTemplate:
    """The text around a sentence: prefix + sentence + suffix, then label_prefix + label.
    The default is the upstream question: "<sentence> Is this movie bad or good? This movie is" + " good"."""
    suffix: str
    prefix: str = ""
    label_prefix: str = " "  # the answer's leading space belongs to the label (see classifier.py)

    @classmethod
    def question(cls, label_names: Sequence[str]) -> "PromptTemplate":
        return cls(suffix=" " + zero_shot_question(list(label_names)))


@dataclass(frozen=True)
class Prompt:
    """The template as token ids: prefix_ids (BOS, template prefix, demonstrations), suffix_ids,
    and every label's continuation ids."""
    prefix_ids: list[int]
    suffix_ids: list[int]
    label_ids: list[list[int]]

    def query(self, sentence_ids: Sequence[int]) -> list[int]:
        """What a batch row holds: the sentence and the suffix (the prefix is cached, not repeated)."""
        return list(sentence_ids) + self.suffix_ids

    def sentence_room(self, max_seq_len: int) -> int:
        """Context positions left for the sentence: the rest is prefix, suffix and the longest answer."""
        return max_seq_len - len(self.prefix_ids) - len(self.suffix_ids) - max(map(len, self.label_ids))


def draw_demonstrations(examples: Sequence[tuple[int, str]], num_labels: int, k: int,
                        seed: int) -> list[tuple[int, str]]:
    """K (label, sentence) demonstrations from the training examples, balanced over the labels
    (each gets k // num_labels, and k % num_labels labels drawn at random one more), in a random
    order; the same seed draws the same demonstrations."""
    rng = random.Random(seed)
    by_label = [[e for e in examples if e[0] == label] for label in range(num_labels)]
    counts = [k // num_labels] * num_labels
    for label in rng.sample(range(num_labels), k % num_labels):
        counts[label] += 1
    short = [f"label {label}: {len(pool)} examples, {count} needed"
             for label, (pool, count) in enumerate(zip(by_label, counts)) if len(pool) < count]
    if short:
        raise ValueError(f"--shots {k} needs more training examples per label than there are ({'; '.join(short)})")
    drawn = [e for pool, count in zip(by_label, counts) for e in rng.sample(pool, count)]
    rng.shuffle(drawn)
    return drawn


def build_prompt(tokenizer, template: PromptTemplate, label_names: Sequence[str],
                 demonstrations: Sequence[tuple[int, str]] = ()) -> Prompt:
    """The token pieces of `template`. Each demonstration is written as a query is, followed by
    its answer and a newline: sentence + suffix + label_prefix + label + "\\n"."""
    suffix_ids = continuation_ids(tokenizer, ".", template.suffix)
    label_ids = [continuation_ids(tokenizer, template.suffix, template.label_prefix + name) for name in label_names]
    newline = continuation_ids(tokenizer, ".", "\n")
    prefix_ids = tokenizer.encode(template.prefix, bos=True, eos=False)  # BOS only for a model that uses one
    for label, sentence in demonstrations:
        prefix_ids += tokenizer.encode(sentence, bos=False, eos=False) + suffix_ids + label_ids[label] + newline
    return Prompt(prefix_ids, suffix_ids, label_ids)


class PrefixCachedLlama(PrefixedLlama):
    """A Llama that reads every sequence after the same prefix, whose keys and values are computed
    once per forward call (batch of one) and copied into each row's cache. While the backbone is
    frozen (nothing requires grad), they are kept across calls too; a model that trains recomputes
    them, so its gradients flow through the prefix. Behaves like a Llama for the classifiers."""

    def __init__(self, llama, prefix_ids: Sequence[int]):
        super().__init__(llama)
        self.prefix_ids = list(prefix_ids)
        self._kept = None  # [(keys, values)] per layer, each (1, n_kv_heads, P, head_dim)

    @property
    def n_prefix_positions(self) -> int:
        return len(self.prefix_ids)

    def _prefix_keys_values(self, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        frozen = not any(p.requires_grad for p in self.llama.parameters())
        if frozen and self._kept is not None and self._kept[0][0].device == device:
            return self._kept
        cache = self.llama.new_kv_cache(1, self.n_prefix_positions)
        self.llama(torch.tensor([self.prefix_ids], device=device), kv_cache=cache)
        keys_values = [(c.keys, c.values) for c in cache]
        self._kept = keys_values if frozen else None
        return keys_values

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, kv_cache: list[KVCache] | None = None):
        """As Llama.forward for tokens that follow the prefix; attention_mask covers the tokens
        (and, continuing a kv_cache, the positions after the prefix)."""
        n, batch_size = self.n_prefix_positions, tokens.shape[0]
        if n == 0:
            return self.llama(tokens, targets, attention_mask, kv_cache)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(batch_size, n), attention_mask], dim=1)
        if kv_cache is None or kv_cache[0].length == 0:
            kv_cache = kv_cache or self.llama.new_kv_cache(batch_size, n + tokens.shape[1])
            for layer_cache, (keys, values) in zip(kv_cache, self._prefix_keys_values(tokens.device)):
                layer_cache.append(keys.expand(batch_size, -1, -1, -1), values.expand(batch_size, -1, -1, -1))
        return self.llama(tokens, targets, attention_mask, kv_cache)


class PromptClassifier(nn.Module):
    """Score the label words after prefix + sentence + suffix; returns each label's share of the
    label words' probability, log p(label) - log sum_l p(l), shape (B, num_labels).

    input_ids (B, T) are right-padded queries (Prompt.query: sentence + suffix). It starts frozen:
    the zero-shot (or K-shot) classifier. With the backbone (`.llama.requires_grad_(True)`) or
    adapters on `.llama` trainable, and the classification NLL as the loss, it is prompt-based fine-tuning."""

    def __init__(self, llama, prompt: Prompt):
        super().__init__()
        self.llama = PrefixCachedLlama(llama.requires_grad_(False), prompt.prefix_ids)
        self.prompt = prompt
        self.num_labels = len(prompt.label_ids)
        table, real = label_table(prompt.label_ids)
        self.register_buffer("label_table", table, persistent=False)
        self.register_buffer("label_mask", real, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = score_continuations(self.llama, input_ids, attention_mask, self.label_table, self.label_mask)
        return scores.log_softmax(dim=-1)


class CalibratedClassifier(nn.Module):
    """Contextual calibration of a classifier that returns label log-probabilities: subtract the
    log of the mean label distribution on content-free inputs, renormalise (Zhao et al. 2021)."""

    def __init__(self, classifier: nn.Module, content_free_ids: Sequence[Sequence[int]]):
        super().__init__()
        self.classifier = classifier
        with torch.no_grad():
            device = classifier.label_table.device
            probs = torch.cat([classifier(torch.tensor([ids], device=device)).exp() for ids in content_free_ids])
        self.register_buffer("log_content_free", probs.mean(0).log(), persistent=False)  # (num_labels,)

    @property
    def llama(self):
        return self.classifier.llama

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        log_probs = self.classifier(input_ids, attention_mask)  # (B, num_labels), normalised over labels
        return (log_probs - self.log_content_free).log_softmax(dim=-1)


def content_free_queries(tokenizer, prompt: Prompt, texts: Sequence[str] = CONTENT_FREE_INPUTS) -> list[list[int]]:
    """The content-free inputs as queries of `prompt` (sentence tokens + suffix)."""
    return [prompt.query(tokenizer.encode(text, bos=False, eos=False)) for text in texts]
