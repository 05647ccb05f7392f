"""Two ways to turn a pretrained Llama into a sentence classifier.

- LlamaZeroShotClassifier: no training at all. Append a question to the sentence
  ("Is this movie bad or good? This movie is") and ask the language model which answer it
  finds most likely (the prompting recipe of GPT-3, Brown et al. 2020, Sec. 2).
- LlamaEmbeddingClassifier: use the model as a feature extractor. The hidden state of the
  last token has read the whole sentence (attention is causal), so a linear layer on top of it
  can be trained to predict the label (as GPT-1 does, Radford et al. 2018, Sec. 3.2), with the
  backbone frozen ('pretrain') or trained along ('finetune').

Both return log-probabilities of shape (B, num_labels); the predicted label is their argmax.
`config` is a plain namespace: pretrained_model_path, num_labels, option ('pretrain' or
'finetune'), hidden_dropout_prob, and optionally norm_type (what the checkpoint cannot tell).
"""

import torch
import torch.nn.functional as F
from torch import nn

from llama import Llama, load_pretrained


def load_backbone(config) -> Llama:
    """The pretrained Llama named by config.pretrained_model_path, with config.norm_type and
    config.dropout (the model's own dropout) where they are set."""
    overrides = {field: getattr(config, field) for field in ("norm_type", "dropout")
                 if getattr(config, field, None) is not None}
    return load_pretrained(config.pretrained_model_path, **overrides)


def last_real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) padding mask (1 = real token) -> (B,) index of each row's last real token.

    Works for right and left padding alike: the largest index whose mask is 1."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=-1)


def zero_shot_question(label_names: list[str]) -> str:
    """The upstream question, without the trailing space: the space belongs to the answer
    (see LlamaZeroShotClassifier). Two labels read "a or b", more read "a, b, or c"."""
    if len(label_names) == 2:
        choices = " or ".join(label_names)
    else:
        choices = ", ".join(label_names[:-1]) + ", or " + label_names[-1]
    return f"Is this movie {choices}? This movie is"


def continuation_ids(tokenizer, context: str, text: str) -> list[int]:
    """The token ids `text` gets when it follows `context`, e.g. text = " good".

    Tokenized alone, " good" would give SentencePiece's ['▁', '▁good'] (a dummy-prefix space
    plus our own), which the model never saw after "is". Tokenizing context + text and
    removing the context's tokens gives the ['▁good'] of running text. Both tokenizers used
    here split at whitespace before anything else (SentencePiece's split_by_whitespace, the
    byte-level BPE's pre-tokenizer), so a space-led continuation gets the same tokens after
    any context: we can tokenize the question and the labels once, not once per sentence."""
    head = tokenizer.encode(context, bos=False, eos=False)
    full = tokenizer.encode(context + text, bos=False, eos=False)
    if full[:len(head)] != head or len(full) == len(head):
        raise ValueError(f"the tokenizer merges {text!r} into the text before it ({context!r}): "
                         "cannot score it as a separate continuation")
    return full[len(head):]


def label_table(label_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels' token ids as a right-padded (num_labels, L) table, L = the longest label,
    and the (num_labels, L) booleans that mark its real entries."""
    longest = max(len(ids) for ids in label_ids)
    table = torch.zeros(len(label_ids), longest, dtype=torch.long)
    real = torch.zeros(len(label_ids), longest, dtype=torch.bool)
    for i, ids in enumerate(label_ids):
        table[i, :len(ids)] = torch.tensor(ids)
        real[i, :len(ids)] = True
    return table, real


def score_continuations(llama, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                        label_table: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) right-padded prompts -> (B, num_labels): the log-probability of every label's token
    sequence (a row of label_table) as the continuation of every prompt. Gradients flow where the
    model's parameters require them (prompt-based fine-tuning trains through this)."""
    batch_size, prompt_len = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    n_labels, label_len = label_table.shape

    # 1. The prompt, once. Its last real position predicts every label's first token.
    cache = llama.new_kv_cache(batch_size, max_len=prompt_len + label_len - 1)
    _, hidden = llama(input_ids, attention_mask=attention_mask, kv_cache=cache)  # (B, T, dim)
    last = hidden[torch.arange(batch_size), last_real_positions(attention_mask)]  # (B, dim)
    first = F.log_softmax(llama.output(last).float(), dim=-1)  # (B, V)
    scores = first[:, label_table[:, 0]]  # (B, n_labels)
    if label_len == 1:
        return scores

    # 2. Every label's other tokens, for all (sentence, label) pairs in one batch of
    # B * n_labels rows (row b * n_labels + l: sentence b, label l) on the shared prompt cache.
    for layer_cache in cache:
        layer_cache.repeat_interleave(n_labels)
    inputs = label_table[:, :-1].repeat(batch_size, 1)  # (B*n, L-1): token j predicts j+1
    targets = label_table[:, 1:].repeat(batch_size, 1)  # (B*n, L-1)
    is_target = label_mask[:, 1:].repeat(batch_size, 1)  # (B*n, L-1)
    mask = torch.cat([attention_mask.repeat_interleave(n_labels, dim=0),
                      label_mask[:, :-1].repeat(batch_size, 1).to(attention_mask.dtype)], dim=1)
    _, hidden = llama(inputs, attention_mask=mask, kv_cache=cache)  # (B*n, L-1, dim)
    log_probs = F.log_softmax(llama.output(hidden).float(), dim=-1)  # (B*n, L-1, V)
    rest = log_probs.gather(-1, targets[..., None])[..., 0] * is_target  # padding scores 0
    return scores + rest.sum(-1).view(batch_size, n_labels)


class LlamaZeroShotClassifier(nn.Module):
    """Classify by asking the frozen language model which label continues the prompt best.

    The prompt is BOS + sentence + " " + question (zero_shot_question). The score of a label is
    the log-probability of its whole token sequence " " + label as the prompt's continuation,
    log p(t_1 | prompt) + log p(t_2 | prompt, t_1) + ..., so labels of several tokens are scored
    properly (upstream summed all of a label's token scores at one position, and that position
    was a pad for every row of a right-padded batch but the longest).

    The prompt is the expensive part and is the same for every label, so it runs once: its keys
    and values are cached (KVCache), and only the label tokens (all but each label's last) run
    on top of that cache, for all labels at once. When every label is a single token, the
    prompt's last hidden state alone scores them all.
    """

    def __init__(self, config, tokenizer, label_names: list[str]):
        super().__init__()
        if len(label_names) != config.num_labels:
            raise ValueError(f"{len(label_names)} label names for {config.num_labels} labels")
        self.num_labels = config.num_labels
        self.llama = load_backbone(config)
        self.llama.requires_grad_(False)  # nothing trains in zero-shot classification
        self.tokenizer = tokenizer
        self.label_names = list(label_names)
        question = zero_shot_question(self.label_names)
        # What run_llama.py appends to the sentence's tokens to build the prompt.
        self.question_ids = continuation_ids(tokenizer, ".", " " + question)
        self.label_ids = [continuation_ids(tokenizer, question, " " + name) for name in self.label_names]
        table, real = label_table(self.label_ids)
        self.register_buffer("label_table", table, persistent=False)
        self.register_buffer("label_mask", real, persistent=False)

    @property
    def max_label_len(self) -> int:
        """Positions the prompt must leave free in the model's context for the answer."""
        return self.label_table.shape[1]

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T): right-padded prompts (BOS + sentence + question ids).
        Returns (B, num_labels): log p(" " + label | prompt) for every label."""
        return score_continuations(self.llama, input_ids, attention_mask, self.label_table, self.label_mask)


class LlamaEmbeddingClassifier(nn.Module):
    """A linear classifier on the Llama's hidden state of the last real token.

    'pretrain' freezes the backbone (only the head trains); 'finetune' trains everything.
    Other choices (LoRA adapters) are made by the caller on self.llama after construction."""

    def __init__(self, config):
        super().__init__()
        if config.option not in ("pretrain", "finetune"):
            raise ValueError(f"option must be 'pretrain' or 'finetune', got {config.option!r}")
        self.num_labels = config.num_labels
        self.llama = load_backbone(config)
        self.llama.requires_grad_(config.option == "finetune")
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier_head = nn.Linear(self.llama.config.dim, self.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T), attention_mask (B, T) with 1 for real tokens (None: all real).
        Returns log-probabilities (B, num_labels).

        1. Run the Llama on the batch and take its final hidden states (B, T, dim).
        2. Pick, in every row, the hidden state of the last real token (last_real_positions):
           a causal model has read the whole sentence only there, and with right padding the
           last position of a short row is a pad.
        3. Dropout, the linear head, then log_softmax over the labels.
        """
        # BEGIN SOLUTION
        batch_size, seq_len = input_ids.shape
        _, hidden = self.llama(input_ids, attention_mask=attention_mask)  # (B, T, dim)
        if attention_mask is None:
            last_positions = torch.full((batch_size,), seq_len - 1, device=input_ids.device)
        else:
            last_positions = last_real_positions(attention_mask)
        last = hidden[torch.arange(batch_size), last_positions]  # (B, dim)
        logits = self.classifier_head(self.dropout(last))  # (B, num_labels)
        return F.log_softmax(logits.float(), dim=-1)
        # END SOLUTION
