"""The one training loop: any objective, any set of trainable parameters, any schedule.

    for step in range(start, max_steps):
        lr = learning_rate(step)                     # warmup, then cosine / linear / constant
        for each micro-batch of this step's batch:   # gradient accumulation
            loss = objective(model, micro_batch)     # classification NLL, language-model loss, ...
            loss.backward()                          # (DDP all-reduces on the last micro-step only)
        clip gradients; optimizer.step()
        every eval_every steps: evaluate, keep the best checkpoint, maybe stop early

What trains is whatever has `requires_grad` (full fine-tuning, LoRA, IA3, prompt tuning decide that
before the loop starts). The loop reads top to bottom like llama2.c's and nanoGPT's train.py; what
differs between a pre-training run and a classification run (what evaluation means, what is saved,
what is printed) lives in the `RunHooks` a driver passes in (pretraining.py, classification.py).

Data come as `batch_at(step)`, a function of the step alone, so a resumed run sees exactly the
batches the interrupted one would have seen. Under `torchrun` every process computes the same global
batch and takes its own shard of it: `--batch_size` means the same training with 1 or N processes.
"""

import math
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from optimizer import AdamW

DIVERGENCE_FACTOR = 4.0  # a loss this many times its first value, averaged over DIVERGENCE_WINDOW steps
DIVERGENCE_WINDOW = 20


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or rose far above where it started."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM: the driver saved what it keeps; the message says what and how to go on.
    `exit_code` is the shell's for the signal (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signal_number: int = signal.SIGINT):
        super().__init__(message)
        self.exit_code = 128 + signal_number


@dataclass
class LoopSettings:
    """The loop's own flags (every training option has them)."""
    max_steps: int
    lr: float
    lr_schedule: str = "constant"  # "cosine", "linear" or "constant" after the warmup
    warmup_steps: int = 0
    min_lr: float = 0.0  # where cosine and linear decay end
    grad_accum: int = 1  # micro-steps per optimizer step: the batch is split, not multiplied
    weight_decay: float = 0.0  # decoupled, on matrices only (not on norms, biases, adapter vectors)
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = None  # clip the global gradient norm to this
    eval_every: int = 0  # steps between evaluations; 0: only at the end
    patience: int | None = None  # stop after this many evaluations without improvement
    higher_is_better: bool = False  # of the metric that picks the best checkpoint
    amp: str = "auto"  # mixed precision: "auto", "bfloat16", "float16" (with a gradient scaler) or "off"


def learning_rate(step: int, s: LoopSettings) -> float:
    """Linear warmup over warmup_steps (a fresh Adam's steps are noisy: start small), then decay
    from lr to min_lr over the remaining steps (Loshchilov & Hutter 2017 for the cosine)."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.lr_schedule == "constant" or s.max_steps <= s.warmup_steps:
        return s.lr
    progress = (step - s.warmup_steps) / (s.max_steps - s.warmup_steps)  # 0 -> 1
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if s.lr_schedule == "cosine" else 1 - progress
    return s.min_lr + shape * (s.lr - s.min_lr)


def build_optimizer(model: torch.nn.Module, s: LoopSettings) -> AdamW:
    """Our AdamW over the trainable parameters. Weight decay pulls weights towards zero, which
    suits matrices; on gains and biases (1-D) it only fights the normalisation, so they get none."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": s.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    return AdamW([g for g in groups if g["params"]], lr=s.lr, betas=s.betas)


@dataclass
class Distributed:
    """Who this process is under torchrun (rank 0 of 1 without it)."""
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> "Distributed":
        """Join the process group torchrun describes in WORLD_SIZE/RANK (NCCL between GPUs, gloo
        between CPU processes); a plain `python` run is a world of one."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        if not torch_dist.is_initialized():
            # NCCL carries CUDA tensors only: the few numbers the loop itself exchanges (the
            # loss, a stop request) and CPU models go through gloo.
            torch_dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        return cls(torch_dist.get_rank(), world_size)

    def barrier(self) -> None:
        """Wait until every process has arrived here."""
        if self.world_size > 1:
            torch_dist.barrier()

    def mean(self, *values: float) -> list[float]:
        """The mean of each number over all processes (one all-reduce for all of them)."""
        if self.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        torch_dist.all_reduce(tensor)
        return (tensor / self.world_size).tolist()


def shards(batch: dict, objective, grad_accum: int, dist: Distributed):
    """This process's micro-batches of one global batch, with the weight each loss gets so that the
    gradients, summed over micro-steps and averaged over processes by DDP, are those of the mean
    loss over the whole batch. A shard left empty (a short last batch) runs one row at weight 0:
    every process must take part in every all-reduce."""
    n_shards = grad_accum * dist.world_size
    split = {name: value.tensor_split(n_shards) for name, value in batch.items()}  # each: n_shards pieces
    pieces = [{name: split[name][i] for name in batch} for i in range(n_shards)]
    counts = [objective.count(piece) if len(piece["input_ids"]) else 0 for piece in pieces]
    total = sum(counts)
    for micro in range(grad_accum):
        index = micro * dist.world_size + dist.rank
        if counts[index]:
            yield pieces[index], counts[index] * dist.world_size / total
        else:
            yield {name: value[:1] for name, value in batch.items()}, 0.0


class RunHooks:
    """What a driver does around the loop; every method may be left as it is.
    `metric` names the evaluation result that picks the best checkpoint."""

    metric = "loss"

    def evaluate(self, model, step: int) -> dict:
        """Metrics of the model as it is now, after `step` optimizer steps."""
        return {self.metric: 0.0}

    def on_evaluation(self, state: "LoopState", metrics: dict, improved: bool, optimizer) -> None:
        """Called after every evaluation (save the best, print), on every process."""

    def on_interrupt(self, state: "LoopState", optimizer) -> str:
        """Ctrl-C: save what should survive; returns the line to print."""
        return "interrupted"

    def log_step(self, state: "LoopState", loss: float, lr: float, tokens_per_second: float) -> None:
        """After every optimizer step (rank 0 only)."""


@dataclass
class LoopState:
    """Where a run stands: what a resumed run needs besides the weights and the optimizer."""
    step: int = 0
    best: float | None = None
    best_step: int | None = None
    evaluations_without_improvement: int = 0
    first_loss: float | None = None
    recent_losses: list[float] = field(default_factory=list)
    tokens_seen: int = 0
    grad_scaler: dict | None = None  # float16's loss scale and its growth counter (GradScaler.state_dict)

    def to_dict(self) -> dict:
        return dict(vars(self))


AMP_CHOICES = ("auto", "bfloat16", "float16", "off")


def resolve_amp(amp: str, device: torch.device) -> str:
    """What `--amp auto` means on this device. Autocast runs the matrix products in 16 bits: about
    twice the speed and half the activation memory. bfloat16 keeps float32's range, so it needs
    nothing more, but only GPUs of compute capability 8.0 and later (A100, RTX 30xx, H100) have
    bfloat16 units; older ones (Colab's T4, the V100) get float16, whose small range needs a
    gradient scaler. (torch.cuda.is_bf16_supported() says True on a T4: it counts emulation, which
    is slower than float32, so the capability decides.) The CPU and Apple's MPS train in float32."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp != "auto":
        return amp
    if device.type != "cuda":
        return "off"
    major, _ = torch.cuda.get_device_capability(device)
    return "bfloat16" if major >= 8 else "float16"


def autocast(device: torch.device, amp: str = "auto"):
    """The autocast context of `amp` on `device` (nothing when it is off)."""
    amp = resolve_amp(amp, device)
    return nullcontext() if amp == "off" else torch.autocast(device.type, dtype=getattr(torch, amp))


STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


@contextmanager
def interrupt_at_step_end():
    """Ctrl-C during training asks the loop to stop after the current step, so weights and
    optimizer are never caught half-updated; a second Ctrl-C stops at once. SIGTERM, what
    schedulers, containers, `timeout` and torchrun (forwarding its own) send before they kill,
    is handled the same way: the step finishes and the driver saves. (torchrun waits 30 s before
    it kills, so a step must finish in that time.) Yields a dict whose "requested" turns True and
    whose "signal" says which signal asked. (Signal handlers belong to the main thread; elsewhere
    this does nothing.)"""
    flag = {"requested": False, "at": 0.0, "signal": signal.SIGINT}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["requested"]:
            if time.monotonic() - flag["at"] > 1.0:  # torchrun forwards the terminal's Ctrl-C again at once
                raise KeyboardInterrupt
            return
        flag["requested"], flag["at"], flag["signal"] = True, time.monotonic(), signum
        print(f"\n{STOP_SIGNALS[signum]}: stopping after this step (Ctrl-C again to stop at once) ...", flush=True)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def train(model, objective, batch_at, settings: LoopSettings, hooks: RunHooks, device: torch.device,
          dist: Distributed = Distributed(), state: LoopState | None = None, optimizer_state: dict | None = None
          ) -> LoopState:
    """Train `model` for settings.max_steps optimizer steps (from state.step when resuming).
    Raises TrainingInterrupted on Ctrl-C (after hooks.on_interrupt), TrainingDiverged on a blow-up.
    Under torchrun a stop asked for on one process stops them all after the same step."""
    state = state or LoopState()
    optimizer = build_optimizer(model, settings)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # float16 overflows above 65504 and rounds small gradients to 0: the scaler multiplies the loss
    # by a large factor before backward, divides the gradients back before the step, skips a step
    # whose gradients overflowed, and adapts the factor (halved after an overflow, doubled after
    # 2000 clean steps). Disabled, each of its calls below does nothing.
    amp = resolve_amp(settings.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "float16")
    if state.grad_scaler is not None and scaler.is_enabled():
        scaler.load_state_dict(state.grad_scaler)
    if dist.is_main:
        print(f"mixed precision: {amp}{' with a gradient scaler' if scaler.is_enabled() else ''} on {device.type}")
    wrapped = DistributedDataParallel(model) if dist.world_size > 1 else model
    progress = tqdm(total=settings.max_steps, initial=state.step, desc="train", disable=not dist.is_main)
    stopped_early = False
    with interrupt_at_step_end() as interrupt:
        try:
            while state.step < settings.max_steps and not interrupt["requested"]:
                started = time.perf_counter()
                lr = learning_rate(state.step, settings)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                model.train()
                batch, loss, tokens = batch_at(state.step), 0.0, 0
                for micro, (shard, weight) in enumerate(shards(batch, objective, settings.grad_accum, dist)):
                    last = micro == settings.grad_accum - 1  # all-reduce the gradients once, at the end
                    with nullcontext() if last or dist.world_size == 1 else wrapped.no_sync():
                        with autocast(device, amp):
                            micro_loss = objective(wrapped, shard)
                        scaler.scale(micro_loss * weight).backward()
                    loss += micro_loss.item() * weight
                    tokens += shard["input_ids"].numel() if weight else 0
                # The mean loss over the whole global batch; and whether any process was asked to stop.
                loss, stop = dist.mean(loss, float(interrupt["requested"]))
                interrupt["requested"] = stop > 0
                check_divergence(state, loss)
                scaler.unscale_(optimizer)  # clipping and the step see the true gradients
                if settings.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
                scaler.step(optimizer)  # skipped when a gradient overflowed
                scaler.update()
                if scaler.is_enabled():
                    state.grad_scaler = scaler.state_dict()
                optimizer.zero_grad(set_to_none=True)

                state.step += 1
                state.tokens_seen += tokens * dist.world_size
                tokens_per_second = tokens * dist.world_size / (time.perf_counter() - started)
                progress.update()
                progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_second:,.0f}")
                if dist.is_main:
                    hooks.log_step(state, loss, lr, tokens_per_second)

                if state.step == settings.max_steps or (settings.eval_every and state.step % settings.eval_every == 0):
                    metrics = hooks.evaluate(model, state.step)
                    improved = record_evaluation(state, metrics[hooks.metric], settings.higher_is_better)
                    hooks.on_evaluation(state, metrics, improved, optimizer)
                    if settings.patience is not None and state.evaluations_without_improvement >= settings.patience:
                        if dist.is_main:
                            print(f"early stop at step {state.step}: {hooks.metric} has not improved in "
                                  f"{settings.patience} evaluations (best {state.best:.4f} at step {state.best_step})")
                        stopped_early = True
                        break
        except KeyboardInterrupt:  # the second Ctrl-C, mid-step: weights may be half-updated, save nothing
            raise TrainingInterrupted(f"stopped at once during step {state.step + 1}: the files of the last "
                                      "evaluation are kept") from None
        finally:
            progress.close()
    if interrupt["requested"] and state.step < settings.max_steps and not stopped_early:
        raise TrainingInterrupted(hooks.on_interrupt(state, optimizer), interrupt["signal"])
    return state


def check_divergence(state: LoopState, loss: float) -> None:
    """Stop on a NaN/inf loss, or when the loss has risen far above where it started (a learning
    rate too high can leave a loss stuck at hundreds without ever reaching NaN)."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the training loss became {loss} at step {state.step}: stopping (try a lower --lr)")
    if state.first_loss is None:
        state.first_loss = loss
    state.recent_losses = (state.recent_losses + [loss])[-DIVERGENCE_WINDOW:]
    recent = sum(state.recent_losses) / len(state.recent_losses)
    if len(state.recent_losses) == DIVERGENCE_WINDOW and recent > DIVERGENCE_FACTOR * state.first_loss:
        raise TrainingDiverged(f"the training loss diverged: {recent:.1f} on average over the last "
                               f"{DIVERGENCE_WINDOW} steps, against {state.first_loss:.3f} at the start "
                               f"(step {state.step}): stopping (try a lower --lr)")


def record_evaluation(state: LoopState, value: float, higher_is_better: bool) -> bool:
    """Note an evaluation's metric; True if it is the best so far."""
    improved = state.best is None or (value > state.best if higher_is_better else value < state.best)
    if improved:
        state.best, state.best_step, state.evaluations_without_improvement = value, state.step, 0
    else:
        state.evaluations_without_improvement += 1
    return improved
