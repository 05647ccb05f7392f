"""The training loop (training.py): schedules, parameter groups, exact micro-batch weighting,
gradient accumulation, early stopping, divergence and Ctrl-C; data.py's readers and windows."""

import math
import os
import signal

import numpy as np
import pytest
import torch

from config import LlamaConfig
from llama import Llama
from minllama.training import loop as training
from minllama.training.data import InputError, fixed_windows, read_examples, read_text, split_train_val, windows_at
from minllama.training.loop import Distributed, LoopSettings, LoopState, RunHooks, learning_rate, shards
from minllama.training.objectives import IGNORE, ClassificationLoss, LanguageModelLoss

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


def tiny_llama(**overrides) -> Llama:
    torch.manual_seed(0)
    return Llama(LlamaConfig(**{**dict(vocab_size=50, dim=16, n_layers=2, n_heads=4, n_kv_heads=2,
                                       max_seq_len=32), **overrides}))


def lm_batch(rows: int, seq_len: int = 12, seed: int = 0) -> dict:
    tokens = torch.randint(50, (rows, seq_len + 1), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": tokens[:, :-1].clone(), "targets": tokens[:, 1:].clone()}


# ----------------------------------------------------------------------------------------------
# Schedules and the optimizer


def test_warmup_then_cosine_linear_and_constant():
    s = LoopSettings(max_steps=110, lr=1.0, min_lr=0.1, warmup_steps=10, lr_schedule="cosine")
    assert [learning_rate(i, s) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert learning_rate(10, s) == pytest.approx(1.0)
    assert learning_rate(60, s) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert learning_rate(110, s) == pytest.approx(0.1)
    linear = LoopSettings(max_steps=110, lr=1.0, min_lr=0.0, warmup_steps=10, lr_schedule="linear")
    assert learning_rate(35, linear) == pytest.approx(0.75)
    constant = LoopSettings(max_steps=110, lr=1.0, warmup_steps=0)
    assert {learning_rate(i, constant) for i in range(110)} == {1.0}


def test_weight_decay_only_on_matrices():
    model = tiny_llama()
    optimizer = training.build_optimizer(model, LoopSettings(max_steps=1, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99)))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])  # the norms' gains
    assert decayed["betas"] == (0.9, 0.99)
    n_trainable = sum(1 for p in model.parameters())
    assert len(decayed["params"]) + len(plain["params"]) == n_trainable


# ----------------------------------------------------------------------------------------------
# Micro-batches: the gradients of the whole batch's mean loss, however it is split


def gradients_after(model, batch, objective, grad_accum: int, world: Distributed = Distributed()):
    model.zero_grad()
    for shard, weight in shards(batch, objective, grad_accum, world):
        (objective(model, shard) * weight).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("grad_accum", [2, 3, 7])
def test_gradient_accumulation_equals_one_big_batch(grad_accum):
    """Uneven shards (7 rows in 3 micro-batches; an empty one for 7) still give the mean's gradient."""
    model, batch = tiny_llama(), lm_batch(7)
    expected = gradients_after(model, batch, LanguageModelLoss(), 1)
    got = gradients_after(model, batch, LanguageModelLoss(), grad_accum)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-4)


def test_masked_targets_weigh_shards_by_their_counted_tokens():
    """Shards with different numbers of real targets: the loss is the mean over all real targets."""
    model, batch = tiny_llama(), lm_batch(4)
    batch["targets"][:2, :9] = IGNORE  # the first two rows keep only 3 targets each
    expected = gradients_after(model, batch, LanguageModelLoss(), 1)
    got = gradients_after(model, batch, LanguageModelLoss(), 2)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-4)


def test_two_ranks_shards_average_to_the_global_gradient():
    """What DDP computes: each rank's weighted micro-batches, averaged over the ranks."""
    model, batch = tiny_llama(), lm_batch(6)
    expected = gradients_after(model, batch, LanguageModelLoss(), 1)
    per_rank = [gradients_after(model, batch, LanguageModelLoss(), 2, Distributed(rank, 2)) for rank in (0, 1)]
    for name in expected:
        torch.testing.assert_close((per_rank[0][name] + per_rank[1][name]) / 2, expected[name], atol=1e-6, rtol=1e-4)


def test_language_model_loss_is_next_token_cross_entropy():
    model, batch = tiny_llama(), lm_batch(2)
    logits, _ = model(batch["input_ids"], targets=batch["targets"])
    by_hand = -torch.log_softmax(logits, -1).gather(-1, batch["targets"][..., None]).mean()
    torch.testing.assert_close(LanguageModelLoss()(model, batch), by_hand)
    assert LanguageModelLoss.count(batch) == batch["targets"].numel()


# ----------------------------------------------------------------------------------------------
# The loop


class Recorder(RunHooks):
    def __init__(self, values):
        self.values, self.evaluations = list(values), []

    def evaluate(self, model, step):
        return {"loss": self.values.pop(0)}

    def on_evaluation(self, state, metrics, improved, optimizer):
        self.evaluations.append((state.step, metrics["loss"], improved))


def test_the_loop_learns_and_evaluates_on_schedule():
    model, batch = tiny_llama(), lm_batch(4)
    hooks = Recorder([3.0, 2.0, 1.0])
    settings = LoopSettings(max_steps=30, lr=1e-2, eval_every=10, lr_schedule="cosine", warmup_steps=3)
    before = LanguageModelLoss()(model, batch).item()
    state = training.train(model, LanguageModelLoss(), lambda step: batch, settings, hooks, torch.device("cpu"))
    assert LanguageModelLoss()(model, batch).item() < before - 1.0  # it memorised the batch
    assert [step for step, _, _ in hooks.evaluations] == [10, 20, 30]
    assert (state.step, state.best, state.best_step) == (30, 1.0, 30)
    assert state.tokens_seen == 30 * batch["input_ids"].numel()


def test_early_stopping_after_patience_evaluations_without_improvement():
    hooks = Recorder([2.0, 1.0, 1.5, 1.2, 0.5])
    settings = LoopSettings(max_steps=50, lr=1e-3, eval_every=1, patience=2)
    state = training.train(tiny_llama(), LanguageModelLoss(), lambda step: lm_batch(2), settings, hooks,
                           torch.device("cpu"))
    assert state.step == 4 and state.best == 1.0 and state.best_step == 2


def test_a_loss_far_above_its_start_is_divergence():
    state = LoopState()
    for _ in range(training.DIVERGENCE_WINDOW - 1):
        training.check_divergence(state, 1.0 if state.first_loss is None else 5.0)
    with pytest.raises(training.TrainingDiverged, match="diverged: .* against 1.000 at the start"):
        training.check_divergence(state, 5.0)
    with pytest.raises(training.TrainingDiverged, match="became nan"):
        training.check_divergence(LoopState(), float("nan"))
    steady = LoopState()
    for _ in range(3 * training.DIVERGENCE_WINDOW):
        training.check_divergence(steady, 1.5)  # no alarm for a loss that stays where it started


def test_ctrl_c_stops_after_the_current_step_and_asks_the_hooks_to_save():
    class Interrupting(Recorder):
        def on_interrupt(self, state, optimizer):
            return f"stopped after step {state.step}"

    def batch_at(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would, in the middle of a step
        return lm_batch(2)

    model = tiny_llama()
    with pytest.raises(training.TrainingInterrupted, match="stopped after step 5"):
        training.train(model, LanguageModelLoss(), batch_at, LoopSettings(max_steps=20, lr=1e-3),
                       Interrupting([]), torch.device("cpu"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_classification_loss_counts_what_it_predicted_right():
    class Constant(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return torch.log_softmax(torch.tensor([[2.0, 0.0]]).expand(len(input_ids), 2), -1)

    loss = ClassificationLoss()
    batch = {"input_ids": torch.zeros(3, 2, dtype=torch.long), "attention_mask": torch.ones(3, 2),
             "labels": torch.tensor([0, 1, 0])}
    value = loss(Constant(), batch)
    assert (loss.correct, loss.seen) == (2, 3)
    assert value.item() == pytest.approx(-(2 * math.log(1 / (1 + math.exp(-2))) + math.log(1 / (1 + math.exp(2)))) / 3)


# ----------------------------------------------------------------------------------------------
# data.py


def test_non_utf8_bytes_are_named_by_offset_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("0 ||| fine\n1 ||| caf".encode() + b"\xe9\n")
    with pytest.raises(InputError, match=r"latin1\.txt: byte 20 \(line 2\) is b'\\xe9', which is not UTF-8"):
        read_examples(path)
    with pytest.raises(InputError, match="byte 20"):
        read_text(path)


def test_blank_lines_are_skipped_but_counted_in_line_numbers(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("0 ||| a\n\n1 ||| b\n\n", encoding="utf-8")
    examples = read_examples(path)
    assert [(e.label, e.sentence, e.where.rsplit(":", 1)[1]) for e in examples] == [(0, "a", "1"), (1, "b", "3")]


def test_windows_are_inputs_and_next_tokens():
    ids = np.arange(100, dtype=np.uint16)
    batch = windows_at(ids, [0, 37], 5, "cpu")
    assert batch["input_ids"].tolist() == [[0, 1, 2, 3, 4], [37, 38, 39, 40, 41]]
    assert batch["targets"].tolist() == [[1, 2, 3, 4, 5], [38, 39, 40, 41, 42]]
    fixed = fixed_windows(ids, 5, 4, 2, "cpu")
    assert len(fixed) == 2 and fixed[-1]["targets"][-1, -1].item() == 99  # reaches the last token
    train, val = split_train_val(ids)
    assert (len(train), len(val)) == (90, 10) and val[0] == 90
    with pytest.raises(InputError, match="fewer than one window of --max_seq_len 100"):
        fixed_windows(ids, 100, 1, 1, "cpu")
