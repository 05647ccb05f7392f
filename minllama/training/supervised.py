"""What the supervised drivers share (classification, minllama/classify; instruction tuning,
minllama/instruct): the data splits, predicting label scores in batches, scoring and reporting
them (the `dev acc :: 0.xxx` lines graders grep), prediction files, and the best-dev checkpoint of
the trained tensors, kept by the hooks both drivers' loops run with. Neither driver builds on the
other: each subclasses KeptCheckpointHooks with its own evaluation.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minllama.training.data import Example, InputError, collate, has_placeholder_labels, length_sorted_batches
from minllama.training.loop import Distributed, RunHooks, autocast
from support.checkpoints import load_torch_file
from utils import save_atomically, write_atomically


@dataclass(frozen=True)
class Split:
    """One data split: its examples, the file they came from, where its predictions go."""
    name: str
    path: Path
    examples: list[Example]
    predictions_out: Path | None  # None for the training split

    @property
    def placeholder_labels(self) -> bool:
        return has_placeholder_labels(self.path)


# --------------------------------------------------------------------------------------------
# Predicting and scoring


@torch.no_grad()
def predict(model, encoded: list[list[int]], batch_size: int, pad_id: int, device, desc: str) -> torch.Tensor:
    """(N, num_labels) log-probabilities for the encoded inputs, in input order."""
    model.eval()
    scores = [None] * len(encoded)
    for batch in tqdm(length_sorted_batches([len(ids) for ids in encoded], batch_size), desc=f"eval {desc}"):
        input_ids, attention_mask = collate([encoded[i] for i in batch], pad_id, device)
        with autocast(device):
            log_probs = model(input_ids, attention_mask=attention_mask).float().cpu()
        for row, i in enumerate(batch):
            scores[i] = log_probs[row]
    return torch.stack(scores)


def score(examples: list[Example], log_probs: torch.Tensor, num_labels: int) -> dict:
    """Accuracy, macro-F1 (the mean of the per-label F1 scores: every label counts the same,
    however rare, which accuracy hides on SST's unbalanced labels), and the mean negative
    log-likelihood of the gold labels with its perplexity."""
    from sklearn.metrics import f1_score  # imported here: scikit-learn takes seconds to import

    gold = torch.tensor([example.label for example in examples])
    predictions = log_probs.argmax(-1)
    loss = F.nll_loss(log_probs, gold).item()
    return {"accuracy": (predictions == gold).float().mean().item(),
            "macro_f1": f1_score(gold, predictions, labels=list(range(num_labels)), average="macro", zero_division=0),
            "loss": loss, "perplexity": math.exp(min(loss, 50))}


def report_split(split: Split, log_probs: torch.Tensor, num_labels: int) -> dict:
    """Print `{split} acc :: 0.xxx` (the line graders grep) and macro-F1, unless the labels are placeholders."""
    if split.placeholder_labels:
        print(f"{split.name}: the labels in {split.path} are all {split.examples[0].label}, placeholders: "
              "no accuracy reported")
        return {"examples": len(split.examples), "placeholder_labels": True}
    metrics = score(split.examples, log_probs, num_labels)
    print(f"{split.name} acc :: {metrics['accuracy']:.3f}")
    print(f"{split.name} macro-F1 :: {metrics['macro_f1']:.3f}")
    return {"examples": len(split.examples), "placeholder_labels": False, **metrics}


def write_predictions(path, examples: list[Example], predictions: list[int]) -> None:
    write_atomically(path, "".join(f"{p} ||| {e.sentence}\n" for p, e in zip(predictions, examples)))


# --------------------------------------------------------------------------------------------
# Checkpoints: the trained tensors only


def trained_state(model) -> dict[str, torch.Tensor]:
    """The parameters that train (requires_grad), as CPU copies: all that a checkpoint needs
    besides the pretrained file. A tied matrix appears once (named_parameters skips repeats)."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path, model, config, info: dict) -> None:
    """{'model': trained_state(model), 'model_config': config as a dict, **info}: the trained tensors
    (all, or the adapters and a head) with what rebuilds the model around them. Tensors and builtins
    only, which torch.load(..., weights_only=True) reads (upstream pickled an argparse.Namespace).
    `model` is a classifier or a bare Llama; `config` is its Llama's LlamaConfig."""
    save_atomically({"model": trained_state(model), "model_config": config.to_dict(), **info}, path)


def load_checkpoint(path, model) -> dict:
    """Put a save_checkpoint file's trained tensors back into `model` (built the same way); strict."""
    checkpoint = load_torch_file(path)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    saved = checkpoint["model"]
    if params.keys() != saved.keys():
        raise InputError(f"{path}: its tensors do not match the model's trainable parameters "
                         f"(missing: {sorted(params.keys() - saved.keys())[:3]}, "
                         f"unexpected: {sorted(saved.keys() - params.keys())[:3]})")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    return checkpoint


# --------------------------------------------------------------------------------------------
# The best-dev checkpoint, kept while training


class KeptCheckpointHooks(RunHooks):
    """The bookkeeping of a supervised run's loop: the training losses since the last evaluation,
    one history record per evaluation, and the best-dev checkpoint (save_checkpoint of `model`,
    on the main process, whenever an evaluation improves). Subclasses evaluate and print."""

    def __init__(self, model, config, steps_per_epoch: int, checkpoint_path: Path, info: dict, dist: Distributed):
        self.model, self.config, self.dist = model, config, dist
        self.steps_per_epoch, self.checkpoint_path, self.info = steps_per_epoch, checkpoint_path, info
        self.history, self.losses, self.best_epoch, self.started = [], [], None, time.time()

    def log_step(self, state, loss, lr, tokens_per_second):
        self.losses.append(loss)

    def epoch_of(self, state) -> int:
        return math.ceil(state.step / self.steps_per_epoch) - 1

    def record(self, state, **metrics) -> dict:
        """The evaluation's history record (the mean training loss since the last one included);
        starts the next period."""
        record = {"epoch": self.epoch_of(state), "step": state.step,
                  "train_loss": sum(self.losses) / max(len(self.losses), 1), **metrics,
                  "seconds": time.time() - self.started}
        self.history.append(record)
        self.losses, self.started = [], time.time()
        return record

    def keep_if_improved(self, state, record: dict, improved: bool) -> None:
        if improved:
            self.best_epoch = record["epoch"]
            if self.dist.is_main:
                save_checkpoint(self.checkpoint_path, self.model, self.config,
                                {**self.info, "epoch": record["epoch"], "step": state.step,
                                 "dev_acc": record["dev_acc"]})

    def kept(self) -> str:
        if self.best_epoch is None:
            return "no checkpoint was written"
        return f"the best checkpoint so far ({self.checkpoint_path}, epoch {self.best_epoch}) is kept"

    def on_interrupt(self, state, optimizer):
        return f"interrupted at step {state.step}: {self.kept()}"
