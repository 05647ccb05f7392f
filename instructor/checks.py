"""One grader check for grade.py: what its outputs must match, running it in the sandbox, comparing.

The expected outputs are computed once per run, of two kinds, and a submission must match both:
  - the upstream reference files (fixed inputs: rope_test.py, optimizer_test.py, sanity_check.py);
  - the solution's own outputs on inputs drawn for this run from a seed (drawn_inputs.py).
The sanity check runs on a checkpoint; only stories42M.pt has an upstream reference, so any other
checkpoint is compared with the solution on it: on the upstream batch too, when its vocabulary can
take that batch.

The submission's outputs come from grader_probe.py, run with the submission's modules in a
sandbox (sandbox.py) that sees the drawn inputs but neither the reference files nor the expected
outputs; this process only reads the plain arrays it writes.
"""

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from drawn_inputs import PREFIX, compute, draw
from sandbox import OUTPUT_LIMIT, SCRATCH, Finished, View, python_in_prefix, run_limited


# The upstream checks' tolerances (torch.allclose's keywords; {}: its defaults, as rope_test.py). The
# drawn inputs are random normal numbers, some near zero, where allclose's default atol of 1e-8 would
# fail a correct implementation that merely orders its float32 operations differently.
UPSTREAM_TOLERANCE = {"rope": {}, "optimizer": {"atol": 1e-5, "rtol": 1e-3}, "sanity": {"atol": 1e-5, "rtol": 1e-3}}
DRAWN_TOLERANCE = {"atol": 1e-5, "rtol": 1e-3}


@dataclass
class Answer:
    source: str  # "upstream reference FILE", "inputs drawn with seed S", ...
    arrays: dict[str, torch.Tensor]  # by the names grader_probe.py writes
    tolerance: dict


@dataclass
class Expected:
    """What one check's outputs must match, the same for every submission of a run."""
    answers: list[Answer]
    drawn_inputs: Path  # the .npz of drawn inputs the probe reads
    probe_args: list[str] = field(default_factory=list)
    checkpoint: Path | None = None  # the model the sanity check loads


@dataclass
class CheckResult:
    status: str  # passed, failed, not implemented, error, timeout, memory, output limit
    detail: str = ""
    seconds: float = 0.0


def prepare_expected(references: dict[str, Path | None], norm: str, max_grad_norm: float | None,
                     checkpoint: Path | None, seed: int, folder: Path) -> dict[str, Expected]:
    """Every check's expected outputs; the drawn inputs are written to `folder` for the probes.
    `references` maps each check to its upstream file (sanity: None unless the checkpoint is the
    one it was made with). Without a checkpoint there is no sanity check."""
    # The solution's modules: grade.main() put the repository first on sys.path.
    from llama import load_pretrained
    from sanity_check import SANITY_TOKENS, compute_outputs
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for check, file in references.items():
        source = None if file is None else f"upstream reference {file.name}"
        if check == "rope":
            upstream = dict(zip(("query", "key"), torch.load(file, weights_only=True)))
            probe_args, inputs = [], draw(check, seed)
        elif check == "optimizer":
            upstream = {"weight": torch.from_numpy(np.load(file))}
            probe_args = [] if max_grad_norm is None else ["--max-grad-norm", str(max_grad_norm)]
            inputs = draw(check, seed, max_grad_norm)
        elif checkpoint is None:
            continue
        else:
            config = load_pretrained(checkpoint, norm_type=norm).config
            if file is not None:
                upstream = dict(torch.load(file, weights_only=True))
            elif config.vocab_size > max(map(max, SANITY_TOKENS)):
                source, upstream = "the solution on the upstream batch", compute_outputs(checkpoint, norm)
            else:
                upstream = None
            probe_args = ["--norm", norm] + ([] if upstream else ["--drawn-only"])
            inputs = draw(check, seed, vocab_size=config.vocab_size, max_seq_len=config.max_seq_len)
        answers = [Answer(source, upstream, UPSTREAM_TOLERANCE[check])] if upstream else []
        np.savez(folder / f"{check}.npz", **inputs)
        on_drawn = compute(check, inputs, str(checkpoint), norm)
        answers.append(Answer(f"inputs drawn with seed {seed}",
                              {PREFIX + name: value for name, value in on_drawn.items()}, DRAWN_TOLERANCE))
        expected[check] = Expected(answers, folder / f"{check}.npz", probe_args,
                                   checkpoint if check == "sanity" else None)
    return expected


def compare(actual: dict[str, torch.Tensor], expected: Expected) -> list[str]:
    """What differs from each source of expected outputs; empty if everything matches."""
    problems = []
    for answer in expected.answers:
        for name, want in answer.arrays.items():
            got, want = actual.get(name), want.float()
            if got is None or got.shape != want.shape:
                problems.append(f"{answer.source}: {name}: expected shape {tuple(want.shape)}, got "
                                f"{'nothing' if got is None else tuple(got.shape)}")
            elif not torch.allclose(got, want, **answer.tolerance):
                problems.append(f"{answer.source}: {name}: max abs difference {(got - want).abs().max().item():.3g}")
    return problems


def _classify_failure(run: Finished, timeout_s: float, memory_mb: int) -> CheckResult:
    tail = run.tail
    last = tail.strip().splitlines()[-1] if tail.strip() else ""
    if run.code is None:
        return CheckResult("timeout", f"killed after {timeout_s:g} s")
    if run.output_limit_hit:  # its last line is the flood itself, not a reason
        return CheckResult("output limit", f"output limit ({OUTPUT_LIMIT // 2**20} MiB) exceeded: the check printed "
                                           "that much and was stopped")
    if "MemoryError" in tail or "bad_alloc" in tail or "Cannot allocate memory" in tail \
            or "DefaultCPUAllocator: can't allocate" in tail:
        return CheckResult("memory", f"exceeded the {memory_mb} MB memory limit: {last[-300:]}")
    if run.code < 0:
        return CheckResult("error", f"killed by signal {signal.Signals(-run.code).name}: {last[-300:]}")
    if "NotImplementedError" in tail:
        return CheckResult("not implemented", last[-300:])
    return CheckResult("error", f"exit code {run.code}: {last[-300:]}")


def run_check(check: str, expected: Expected, run_dir: Path, sandbox, timeout_s: float, memory_mb: int) -> CheckResult:
    """Compute one check's outputs in a sandboxed child process, then compare them here."""
    code = View("code", run_dir / "code", writable=True)
    views = [View("harness", run_dir / "harness"), code, View(SCRATCH, run_dir / "tmp", writable=True),
             View("out", run_dir / "out", writable=True), View("drawn", expected.drawn_inputs)]
    if expected.checkpoint is not None:
        views.append(View("checkpoint", expected.checkpoint.resolve()))
    at = {view.name: sandbox.path(view) for view in views}
    command = [str(python_in_prefix()), "-I", "-B", f"{at['harness']}/grader_probe.py", check, at["harness"], at["code"],
               at["drawn"], f"{at['out']}/{check}.npz", *expected.probe_args]
    if expected.checkpoint is not None:
        command += ["--checkpoint", at["checkpoint"]]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": at["code"], "TMPDIR": at[SCRATCH],
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    sandbox.prepare(views)
    try:
        run = run_limited(sandbox.wrap(command, views, cwd=code), run_dir / "code", env, timeout_s, memory_mb,
                          run_dir / f"{check}.log", sandbox.max_processes)
    finally:
        sandbox.finish()
    out, seconds = run_dir / "out" / f"{check}.npz", run.seconds
    if run.code != 0 or not out.is_file():
        result = _classify_failure(run, timeout_s, memory_mb)
        result.seconds = seconds
        return result
    if out.stat().st_size > 64 * 2**20:
        return CheckResult("error", "the outputs file is implausibly large", seconds)
    try:
        with np.load(out, allow_pickle=False) as arrays:
            actual = {name: torch.from_numpy(np.asarray(arrays[name], dtype=np.float32)) for name in arrays.files}
    except (ValueError, OSError) as err:
        return CheckResult("error", f"unreadable outputs: {err}", seconds)
    problems = compare(actual, expected)
    if problems:
        return CheckResult("failed", "; ".join(problems), seconds)
    return CheckResult("passed", "", seconds)
