"""Sentence classification with a pretrained Llama, for every classification `--option` (what
each builds and trains: builders.py for the course's options, method_builders.py for the A+ ones).

Training runs on the one loop of minllama/training/loop.py, an epoch being one pass over the training split;
after every epoch (or every --eval_every steps) the dev split is scored and the best-dev model is
kept at `{option}-{epochs}-{lr}.pt` (the upstream path). Predictions come from that checkpoint:
`PRED ||| SENTENCE` lines in input order, with the original sentences.
"""

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from minllama.classify.builders import ClassifierChoice, Training, build_classifier, choice_record
from minllama.training.data import collate, encode_examples, epoch_rows, length_sorted_batches, padding_fraction
from minllama.training.loop import Distributed, LoopSettings, TrainingDiverged, train
from minllama.training.objectives import ClassificationLoss
from minllama.training.supervised import (KeptCheckpointHooks, Split, load_checkpoint, predict, report_split, score,
                                          write_predictions)
from support.adapters import count_parameters
from utils import save_atomically


def save_merged(model, merge, tokenizer, path: Path) -> None:
    """The adapted model as one plain checkpoint (course format, plus the head and the tokenizer
    record): its adapters folded into the weights by `merge` (lora.merge_lora_weights, ...),
    readable by load_pretrained."""
    merge(model.llama)
    state = {name: t.detach().cpu() for name, t in model.llama.state_dict().items()}
    save_atomically({"model_args": model.llama.config.to_dict(), "model": state, "tokenizer": tokenizer.to_record(),
                     "classifier_head": {k: v.cpu() for k, v in model.classifier_head.state_dict().items()}}, path)
    print(f"wrote the merged model {path}")


class ClassificationHooks(KeptCheckpointHooks):
    """Score dev after every epoch (or --eval_every steps), keep the best-dev checkpoint, print
    the upstream `epoch N: train loss :: ...` line."""

    def __init__(self, model, objective, dev: Split, dev_encoded, batch_size: int, pad_id: int, device,
                 steps_per_epoch: int, checkpoint_path: Path, info: dict, dist: Distributed, metric: str = "accuracy"):
        super().__init__(model, model.llama.config, steps_per_epoch, checkpoint_path, info, dist)
        self.objective, self.dev, self.dev_encoded = objective, dev, dev_encoded
        self.batch_size, self.pad_id, self.device = batch_size, pad_id, device
        # Placeholder dev labels cannot rank evaluations: then the latest is kept.
        self.metric = "step" if dev.placeholder_labels else metric

    def evaluate(self, model, step):
        log_probs = predict(model, self.dev_encoded, self.batch_size, self.pad_id, self.device, "dev")
        metrics = score(self.dev.examples, log_probs, log_probs.shape[1])
        return {**metrics, "step": step}

    def on_evaluation(self, state, metrics, improved, optimizer):
        train_acc = self.objective.correct / max(self.objective.seen, 1)
        record = self.record(state, train_acc=train_acc, dev_acc=metrics["accuracy"], dev_macro_f1=metrics["macro_f1"],
                             dev_loss=metrics["loss"], dev_perplexity=metrics["perplexity"])
        self.objective.correct, self.objective.seen = 0, 0
        self.keep_if_improved(state, record, improved)
        if self.dist.is_main:
            epoch = record["epoch"]
            at = f"epoch {epoch}" if state.step % self.steps_per_epoch == 0 else f"epoch {epoch}, step {state.step}"
            dev = ("dev labels are placeholders" if self.dev.placeholder_labels else
                   f"dev acc :: {record['dev_acc']:.3f}, dev macro-F1 :: {record['dev_macro_f1']:.3f}, "
                   f"dev loss :: {record['dev_loss']:.3f}")
            print(f"{at}: train loss :: {record['train_loss']:.3f}, train acc :: {train_acc:.3f}, {dev}, "
                  f"time :: {record['seconds']:.1f}s")


def epoch_batches(encoded: list[list[int]], labels: list[int], batch_size: int, pad_id: int, device, seed: int):
    """batch_at(step) for classification: the rows of data.epoch_rows, padded, with their labels."""
    rows_at = epoch_rows([len(ids) for ids in encoded], batch_size, seed)

    def batch_at(step: int) -> dict:
        rows = rows_at(step)
        input_ids, attention_mask = collate([encoded[i] for i in rows], pad_id, device)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": torch.tensor([labels[i] for i in rows], device=device)}
    return batch_at


def fit(model, train_split: Split, train_encoded, dev: Split, dev_encoded, epochs: int, batch_size: int,
        pad_id: int, settings: LoopSettings, seed: int, checkpoint_path: Path, info: dict, device,
        dist: Distributed, early_stop_on: str = "accuracy") -> dict:
    """Train for `epochs`, keep the best-dev model (by dev accuracy or dev loss) at checkpoint_path,
    load it back. Returns the history and what the summary reports."""
    lengths = [len(ids) for ids in train_encoded]
    padding = padding_fraction(lengths, length_sorted_batches(lengths, batch_size, random.Random(seed)))
    if dist.is_main:
        print(f"padding: {100 * padding:.1f}% of the training batches' positions")
    steps_per_epoch = math.ceil(len(train_encoded) / batch_size)
    settings = replace(settings, max_steps=settings.max_steps or epochs * steps_per_epoch,
                       eval_every=settings.eval_every or steps_per_epoch)
    objective = ClassificationLoss()
    hooks = ClassificationHooks(model, objective, dev, dev_encoded, batch_size, pad_id, device, steps_per_epoch,
                                checkpoint_path, info, dist, early_stop_on)
    settings = replace(settings, higher_is_better=hooks.metric != "loss")
    batch_at = epoch_batches(train_encoded, [e.label for e in train_split.examples], batch_size, pad_id, device, seed)
    try:
        train(model, objective, batch_at, settings, hooks, device, dist)
    except TrainingDiverged as error:
        raise TrainingDiverged(f"{error}; {hooks.kept()}") from None
    dist.barrier()  # rank 0 has written the checkpoint
    best_epoch = load_checkpoint(checkpoint_path, model)["epoch"]
    if dist.is_main:
        print(f"reloaded the best-dev checkpoint {checkpoint_path} (epoch {best_epoch})")
    return {"train_padding_fraction": padding, "epochs": hooks.history, "best_epoch": best_epoch}


# --------------------------------------------------------------------------------------------
# The whole run


@dataclass(frozen=True)
class ClassificationRun:
    """Everything one classification command needs, resolved and checked by run_llama.py."""
    choice: ClassifierChoice
    label_names: list[str]
    splits: dict[str, Split]  # "train" (unless prompt or --checkpoint_in), "dev", maybe "test"
    batch_size: int
    max_sentence_len: int | None
    epochs: int
    settings: LoopSettings
    seed: int
    checkpoint_out: Path
    checkpoint_in: Path | None
    save_merged: bool
    training: Training | None = None  # what trains (None: prompt, which does not)
    build: Callable = build_classifier  # (choice, training, tokenizer, label_names) -> (model, Encoding)
    early_stop_on: str = "accuracy"  # the dev metric that picks the best checkpoint (and stops early)
    after_training: object = None  # e.g. the WiSE-FT sweep: .before(model), then .after(model, run, ...)


def run_classification(run: ClassificationRun, tokenizer, device, dist: Distributed) -> dict:
    """(Train,) predict dev and test, report; returns the run's summary."""
    model, encoding = run.build(run.choice, run.training, tokenizer, run.label_names)
    model.to(device)
    prefix = run.training.adapter_prefix if run.training else None
    counted = count_parameters(model, prefix)
    training = "train" in run.splits
    summary = {"option": run.choice.option, "checkpoint": run.choice.checkpoint, "device": str(device),
               "trainable_parameters": counted.trainable, "total_parameters": counted.total,
               "trainable_fraction": counted.trainable_fraction}
    if prefix is not None:
        summary["adapter_parameters"] = counted.adapter
    if training and dist.is_main:
        print(counted)
    encoded = {name: encode_examples(split.examples, tokenizer, encoding.max_len, encoding.suffix_ids,
                                     run.max_sentence_len, name, bos=encoding.bos)
               for name, split in run.splits.items()}
    if run.checkpoint_in is not None:
        loaded = load_checkpoint(run.checkpoint_in, model)
        print(f"loaded {run.checkpoint_in} (epoch {loaded.get('epoch')})")
        summary["checkpoint_in"] = run.checkpoint_in
    if training:
        if run.after_training is not None:
            run.after_training.before(model)
        info = {"option": run.choice.option, "label_names": run.label_names, "choice": choice_record(run.choice)}
        summary.update(fit(model, run.splits["train"], encoded["train"], run.splits["dev"], encoded["dev"],
                           run.epochs, run.batch_size, tokenizer.pad_id, run.settings, run.seed, run.checkpoint_out,
                           info, device, dist, run.early_stop_on))
        summary["checkpoint_out"] = run.checkpoint_out
        if run.after_training is not None:
            summary.update(run.after_training.after(model, run, encoded["dev"], tokenizer.pad_id, device,
                                                    {**info, "epoch": summary["best_epoch"]}, dist))
    if not dist.is_main:
        return summary
    for name, split in run.splits.items():
        if split.predictions_out is None:
            continue
        log_probs = predict(model, encoded[name], run.batch_size, tokenizer.pad_id, device, name)
        write_predictions(split.predictions_out, split.examples, log_probs.argmax(-1).tolist())
        print(f"wrote {split.predictions_out}")
        summary[name] = {"data": split.path, "predictions": split.predictions_out,
                         **report_split(split, log_probs, run.choice.num_labels)}
    if run.save_merged:
        merged = run.checkpoint_out.with_suffix(".merged.pt")
        save_merged(model, run.training.merge, tokenizer, merged)
        summary["merged_checkpoint"] = merged
    return summary
