"""What the training loop minimises. Each objective is called as `objective(model, batch)` and
returns the mean loss over its batch; `count(batch)` says how many terms that mean averages, so
the loop can weigh micro-batches and processes exactly (training.shards)."""

import torch.nn.functional as F

IGNORE = -100  # a target that takes no part in the loss (F.cross_entropy's ignore_index)


class ClassificationLoss:
    """Negative log-likelihood of the gold labels under a classifier that returns
    log-probabilities (B, num_labels), averaged over the rows of the batch. It also counts the
    correct predictions of the batches it sees (upstream's `train acc`: measured as the batches
    train, dropout on, at no extra cost); the caller resets `correct` and `seen`."""

    def __init__(self):
        self.correct = self.seen = 0

    def __call__(self, model, batch):
        log_probs = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        self.correct += (log_probs.argmax(-1) == batch["labels"]).sum().item()
        self.seen += len(batch["labels"])
        return F.nll_loss(log_probs.float(), batch["labels"])

    @staticmethod
    def count(batch) -> int:
        return len(batch["labels"])


class LanguageModelLoss:
    """Next-token cross-entropy, averaged over the target tokens (Radford et al. 2018, Sec. 3.1):
    `targets` are the inputs shifted by one; positions whose target is IGNORE do not count (the
    instruction part of an instruction-tuning example, padding)."""

    def __call__(self, model, batch):
        logits, _ = model(batch["input_ids"], targets=batch["targets"], attention_mask=batch.get("attention_mask"))
        return F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE)

    @staticmethod
    def count(batch) -> int:
        return int((batch["targets"] != IGNORE).sum())
