"""Grade submissions: `python instructor/grade.py SUBMISSION [SUBMISSION ...] --out DIR`.

A SUBMISSION is a zip made by prepare_submit.py (one folder named after the Andrew ID) or a folder.
For each one this tool
  1. extracts it safely into DIR/work/NAME: absolute paths, `..`, symlinks, too many files or too
     many bytes are rejected (sizes are checked in the zip headers and again while streaming,
     since headers can lie);
  2. runs the grader checks (RoPE, AdamW, the sanity forward pass) on the submission's code, each
     in its own child process (grader_probe.py) with a time limit and a memory limit. The
     submission's code is never imported into this process: the child writes its outputs as
     plain arrays and this process compares them with the instructor's reference files;
  3. scores the prediction files against the gold labels (dev sets and the SST test set; the
     CFIMDB test labels are placeholders, so no accuracy is reported for them);
  4. measures the perplexity of the submitted generations under a reference model and flags
     outliers for a person to read: a program cannot judge coherence, and never grades on it alone;
  5. applies the upstream rubric:
       B+  the sanity check and the optimizer check pass
       A   ... and every accuracy is within 0.05 (SST) / 0.15 (CFIMDB) of the reference table
           (or above it), and no generation is flagged
       A-  ... the checks pass and the outputs are there, but an accuracy or a generation is off
     and writes DIR/reports/NAME.json and NAME.md, plus DIR/grades.csv for the batch.
A broken, hostile or hanging submission gets a report that says what happened; the batch goes on.

The isolation is process-level (rlimits, a time limit, a fresh working folder, a scrubbed
environment), not a container: grade untrusted code on a machine or account that holds nothing else.
"""

import argparse
import csv
import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

INSTRUCTOR_DIR = Path(__file__).resolve().parent
REPO_ROOT = INSTRUCTOR_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
from course import COURSES, OPTIMIZER_REFERENCE, ROPE_REFERENCE, SANITY_REFERENCE  # noqa: E402

# The instructor's copies of the checks, run against the submission's modules.
HARNESS_FILES = [REPO_ROOT / "rope_test.py", REPO_ROOT / "optimizer_test.py", REPO_ROOT / "sanity_check.py",
                 REPO_ROOT / "course.py",  # the checks read the course table
                 INSTRUCTOR_DIR / "grader_probe.py"]
# Modules students do not write: taken from the solution when a submission lacks them.
SUPPORT_MODULES = ["config.py", "base_llama.py", "utils.py", "checkpoints.py", "tokenizer.py"]

# The course variants (course.py): upstream reference accuracies (DESIGN.md, mean of 10 seeds), the
# norm of the sanity reference and the max_grad_norm of the optimizer reference; and the rubric's tolerances.
REFERENCE_ACCURACY = {name: c.reference_accuracy() for name, c in COURSES.items()}
TOLERANCE = {"sst": 0.05, "cfimdb": 0.15}
VARIANT_CHECKS = {name: (c.norm, c.max_grad_norm) for name, c in COURSES.items()}
REFERENCE_FILES = {"rope": ROPE_REFERENCE,
                   "optimizer": {c.max_grad_norm: c.explicit_reference(OPTIMIZER_REFERENCE) for c in COURSES.values()},
                   "sanity": {c.norm: c.explicit_reference(SANITY_REFERENCE) for c in COURSES.values()}}
GENERATION_FILES = ["generated-sentence-temp-0.txt", "generated-sentence-temp-1.txt"]
MAX_TEXT_BYTES = 20 * 2**20  # a prediction or generation file larger than this is not read


class Rejected(Exception):
    """The submission cannot be graded safely; the message says why."""


# ----------------------------------------------------------------------------- safe extraction

@dataclass
class Limits:
    max_files: int = 2000
    max_bytes: int = 200 * 2**20
    timeout_s: float = 900.0
    memory_mb: int = 8192


def _check_member_name(name: str) -> None:
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise Rejected(f"absolute path in the archive: {name!r}")
    if ".." in parts:
        raise Rejected(f"path with '..' in the archive: {name!r}")
    if "\0" in name:
        raise Rejected(f"file name with a NUL byte in the archive: {name!r}")


def safe_extract_zip(zip_path: Path, dest: Path, limits: Limits) -> None:
    """Extract `zip_path` into `dest`, refusing anything that could escape it or exhaust the disk."""
    dest.mkdir(parents=True)
    root = dest.resolve()
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise Rejected(f"{zip_path.name} is not a zip file") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_files:
            raise Rejected(f"the archive has {len(infos)} entries; at most {limits.max_files} are accepted")
        declared = sum(info.file_size for info in infos)
        if declared > limits.max_bytes:
            raise Rejected(f"the archive unpacks to {declared} bytes; at most {limits.max_bytes} are accepted")
        for info in infos:
            _check_member_name(info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise Rejected(f"symbolic link in the archive: {info.filename!r}")
        written = 0
        for info in infos:
            target = (dest / info.filename).resolve()
            if root not in target.parents and target != root:
                raise Rejected(f"{info.filename!r} would be written outside the extraction folder")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as source, open(target, "xb") as sink:
                    member_bytes = 0
                    while chunk := source.read(1 << 20):
                        member_bytes += len(chunk)
                        written += len(chunk)
                        if member_bytes > info.file_size or written > limits.max_bytes:
                            raise Rejected(f"{info.filename!r} unpacks to more bytes than its header says "
                                           f"(a zip bomb?); stopped at {written} bytes")
                        sink.write(chunk)
            except FileExistsError:
                raise Rejected(f"{info.filename!r} appears twice in the archive") from None
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as err:
                raise Rejected(f"cannot extract {info.filename!r}: {err}") from None


def safe_copy_folder(folder: Path, dest: Path, limits: Limits) -> None:
    """Copy a submission folder, with the same limits as a zip; symlinks are rejected, not followed."""
    files, total = 0, 0
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root, name)
            if path.is_symlink():
                raise Rejected(f"symbolic link in the submission: {path.relative_to(folder)}")
        for name in names:
            path = Path(root, name)
            files += 1
            total += path.stat().st_size
            if files > limits.max_files or total > limits.max_bytes:
                raise Rejected(f"the folder has more than {limits.max_files} files or {limits.max_bytes} bytes")
    shutil.copytree(folder, dest, symlinks=True)


def code_root(extracted: Path) -> Path:
    """The submission's top-level folder (upstream: one folder named after the Andrew ID)."""
    entries = [p for p in extracted.iterdir() if not p.name.startswith(("_", "."))]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return extracted


# ----------------------------------------------------------------------------- running a check

@dataclass
class CheckResult:
    status: str  # passed, failed, not implemented, error, timeout, memory, skipped
    detail: str = ""
    seconds: float = 0.0


def _limit_resources(memory_bytes: int, cpu_seconds: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 2**20, 256 * 2**20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_limited(command: list[str], cwd: Path, home: Path, limits: Limits, log: Path) -> tuple[int | None, str, float]:
    """Run `command` in its own session with rlimits; kill its whole process group at the time
    limit. Returns (exit code or None on timeout, the output's tail, seconds)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(home),
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.monotonic()
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_limit_resources(limits.memory_mb * 2**20, int(limits.timeout_s) + 5))
        try:
            code = process.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the child and anything it started
            except ProcessLookupError:
                pass
            process.wait()
    with open(log, "rb") as output:
        output.seek(max(0, log.stat().st_size - 4000))
        tail = output.read().decode(errors="replace")
    return code, tail, time.monotonic() - start


def _classify_failure(code: int | None, tail: str, limits: Limits) -> CheckResult:
    last = tail.strip().splitlines()[-1] if tail.strip() else ""
    if code is None:
        return CheckResult("timeout", f"killed after {limits.timeout_s:g} s")
    if "MemoryError" in tail or "bad_alloc" in tail or "Cannot allocate memory" in tail \
            or "DefaultCPUAllocator: can't allocate" in tail:
        return CheckResult("memory", f"exceeded the {limits.memory_mb} MB memory limit: {last[-300:]}")
    if code < 0:
        return CheckResult("error", f"killed by signal {signal.Signals(-code).name}: {last[-300:]}")
    if "NotImplementedError" in tail:
        return CheckResult("not implemented", last[-300:])
    return CheckResult("error", f"exit code {code}: {last[-300:]}")


def run_check(check: str, run_dir: Path, reference_dir: Path, variant: str, checkpoint: Path | None,
              limits: Limits) -> CheckResult:
    """Compute one check's outputs in a child process, then compare them here with the reference."""
    norm, max_grad_norm = VARIANT_CHECKS[variant]
    if check == "rope":
        reference, extra = REFERENCE_FILES["rope"], []
    elif check == "optimizer":
        reference = REFERENCE_FILES["optimizer"][max_grad_norm]
        extra = [] if max_grad_norm is None else ["--max-grad-norm", str(max_grad_norm)]
    else:
        if checkpoint is None or not checkpoint.is_file():
            return CheckResult("skipped", "no checkpoint for the sanity check (--checkpoint)")
        reference = REFERENCE_FILES["sanity"][norm]
        extra = ["--checkpoint", str(checkpoint.resolve()), "--norm", norm]
    reference_path = reference_dir / reference
    if not reference_path.is_file():
        return CheckResult("skipped", f"reference file {reference_path} not found")

    out = run_dir / f"{check}-outputs.npz"
    command = [sys.executable, "-I", str(run_dir / "harness" / "grader_probe.py"), check,
               str(run_dir / "harness"), str(run_dir / "code"), str(out), *extra]
    code, tail, seconds = run_limited(command, run_dir / "code", run_dir / "home", limits, run_dir / f"{check}.log")
    if code != 0 or not out.is_file():
        result = _classify_failure(code, tail, limits)
        result.seconds = seconds
        return result
    if out.stat().st_size > 64 * 2**20:
        return CheckResult("error", "the outputs file is implausibly large", seconds)
    with np.load(out, allow_pickle=False) as arrays:
        actual = {name: torch.from_numpy(arrays[name]) for name in arrays.files}
    if check == "rope":
        expected = dict(zip(("query", "key"), torch.load(reference_path, weights_only=True)))
        tolerance = {}  # torch.allclose's defaults, as rope_test.py
    elif check == "optimizer":
        expected = {"weight": torch.from_numpy(np.load(reference_path))}
        tolerance = {"atol": 1e-5, "rtol": 1e-3}
    else:
        expected = dict(torch.load(reference_path, weights_only=True))
        tolerance = {"atol": 1e-5, "rtol": 1e-3}
    problems = []
    for name, want in expected.items():
        got = actual.get(name)
        if got is None or got.shape != want.shape:
            problems.append(f"{name}: expected shape {tuple(want.shape)}, got "
                            f"{'nothing' if got is None else tuple(got.shape)}")
        elif not torch.allclose(got, want.float(), **tolerance):
            problems.append(f"{name}: max abs difference {(got - want).abs().max().item():.3g}")
    if problems:
        return CheckResult("failed", "; ".join(problems), seconds)
    return CheckResult("passed", "", seconds)


# ----------------------------------------------------------------------------- predictions

def read_labelled(path: Path) -> list[tuple[str, str]]:
    """(label, sentence) of every `LABEL ||| SENTENCE` line."""
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_TEXT_BYTES} bytes")
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        if "|||" not in line:
            raise ValueError(f"{path.name} line {number}: expected 'LABEL ||| SENTENCE'")
        label, sentence = line.split("|||", 1)
        rows.append((label.strip(), sentence.strip()))
    return rows


def score_predictions(predictions: Path, gold: Path) -> dict:
    """Accuracy of a prediction file against the gold file; None for placeholder labels."""
    gold_rows, predicted = read_labelled(gold), read_labelled(predictions)
    if len(predicted) != len(gold_rows):
        raise ValueError(f"{predictions.name} has {len(predicted)} lines, the input has {len(gold_rows)}")
    mismatched = sum(p[1] != g[1] for p, g in zip(predicted, gold_rows))
    if mismatched > 0.05 * len(gold_rows):
        raise ValueError(f"{predictions.name}: {mismatched} of {len(gold_rows)} sentences differ from the input "
                         "(wrong order or the prompt written instead of the sentence?)")
    if len({label for label, _ in gold_rows}) == 1:
        return {"accuracy": None, "note": "placeholder gold labels: no accuracy", "lines": len(gold_rows)}
    correct = sum(p[0] == g[0] for p, g in zip(predicted, gold_rows))
    return {"accuracy": correct / len(gold_rows), "lines": len(gold_rows)}


def score_all(code: Path, data_dir: Path, variant: str) -> dict:
    runs = sorted({run for _, run in REFERENCE_ACCURACY[variant]})
    scores = {}
    for dataset in ("sst", "cfimdb"):
        for run in runs:
            for split in ("dev", "test"):
                name = f"{dataset}-{split}-{run}-output.txt"
                path = code / name
                if not path.is_file() or path.is_symlink():
                    scores[name] = {"error": "missing"}
                    continue
                try:
                    scores[name] = score_predictions(path, data_dir / f"{dataset}-{split}.txt")
                except (ValueError, OSError) as err:
                    scores[name] = {"error": str(err)}
    return scores


# ----------------------------------------------------------------------------- perplexity

class PerplexityModel:
    """A reference language model that scores text: perplexity = exp(mean negative log-likelihood)."""

    def __init__(self, checkpoint: Path, tokenizer_model: Path):
        self.lock = threading.Lock()  # submissions are graded in threads; one model, one caller at a time
        from llama import load_pretrained
        from tokenizer import Tokenizer
        self.model = load_pretrained(checkpoint)
        self.tokenizer = Tokenizer(tokenizer_model=str(tokenizer_model))
        self.name = checkpoint.name

    def perplexity(self, text: str) -> float | None:
        ids = self.tokenizer.encode(text, bos=True, eos=False)[: self.model.config.max_seq_len + 1]
        if len(ids) < 3:
            return None
        tokens = torch.tensor(ids)[None]
        with self.lock, torch.inference_mode():
            logits, _ = self.model(tokens[:, :-1], targets=tokens[:, 1:])
            loss = torch.nn.functional.cross_entropy(logits[0].float(), tokens[0, 1:])
        return math.exp(loss.item())


def default_perplexity_model() -> tuple[Path, Path] | None:
    """stories42M.pt with tokenizer.model when the instructor has them, else the SmolLM2 GGUF."""
    from utils import smollm2_gguf_path
    stories = REPO_ROOT / "stories42M.pt"
    if stories.is_file() and (REPO_ROOT / "tokenizer.model").is_file():
        return stories, REPO_ROOT / "tokenizer.model"
    gguf = smollm2_gguf_path()
    return (gguf, gguf) if gguf else None


def generation_scores(code: Path, scorer: PerplexityModel | None) -> dict:
    scores = {}
    for name in GENERATION_FILES:
        path = code / name
        if not path.is_file() or path.is_symlink():
            scores[name] = {"error": "missing"}
            continue
        text = path.read_bytes()[:MAX_TEXT_BYTES].decode(errors="replace").strip()
        entry = {"characters": len(text), "excerpt": text[:300]}
        if not text:
            entry["flag"] = "empty"
        elif scorer is not None:
            entry["perplexity"] = scorer.perplexity(text)
        scores[name] = entry
    return scores


def flag_generations(reports: list[dict], max_perplexity: float, factor: float = 4.0) -> None:
    """Flag for a person: empty text, a perplexity above max_perplexity, or (with 5 or more
    submissions) above `factor` times the batch median of the same file."""
    for name in GENERATION_FILES:
        values = [r["generations"][name]["perplexity"] for r in reports
                  if r.get("generations", {}).get(name, {}).get("perplexity") is not None]
        median = statistics.median(values) if len(values) >= 5 else None
        for report in reports:
            entry = report.get("generations", {}).get(name)
            if not entry or entry.get("flag") or entry.get("perplexity") is None:
                continue
            if entry["perplexity"] > max_perplexity:
                entry["flag"] = f"perplexity {entry['perplexity']:.1f} > {max_perplexity:g}"
            elif median is not None and entry["perplexity"] > factor * median:
                entry["flag"] = f"perplexity {entry['perplexity']:.1f} > {factor:g} x batch median {median:.1f}"


# ----------------------------------------------------------------------------- the rubric

def apply_rubric(report: dict, variant: str) -> tuple[str, list[str]]:
    checks = report.get("checks", {})
    reasons = []
    if any(checks.get(name, {}).get("status") != "passed" for name in ("sanity", "optimizer")):
        failing = {name: checks.get(name, {}).get("status", "not run") for name in ("sanity", "optimizer")}
        return "B or below", [f"the grader checks do not pass: {failing}"]
    grade = "A"
    for (dataset, run), splits in REFERENCE_ACCURACY[variant].items():
        for split, reference in splits.items():
            name = f"{dataset}-{split}-{run}-output.txt"
            score = report["predictions"].get(name, {})
            if "error" in score:
                return "B+", [f"{name}: {score['error']}"]
            accuracy = score.get("accuracy")
            if accuracy is not None and accuracy < reference - TOLERANCE[dataset]:
                grade = "A-"
                reasons.append(f"{name}: accuracy {accuracy:.3f} is below the reference {reference:.3f} "
                               f"by more than {TOLERANCE[dataset]}")
    for name, entry in report.get("generations", {}).items():
        if "error" in entry:
            return "B+", [f"{name}: {entry['error']}"]
        if entry.get("flag"):
            grade = "A-"
            reasons.append(f"{name} flagged ({entry['flag']}): a person should read it; A if it is coherent")
    return grade, reasons


# ----------------------------------------------------------------------------- one submission

def _unique_name(submission: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", submission.name.removesuffix(".zip")) or "submission"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def grade_submission(submission: Path, name: str, args, limits: Limits, scorer) -> dict:
    report = {"submission": str(submission), "name": name, "variant": args.variant, "status": "graded"}
    work = args.out / "work" / name
    if work.exists():
        shutil.rmtree(work)
    extracted = work / "extracted"
    try:
        if submission.is_dir():
            safe_copy_folder(submission, extracted, limits)
        elif submission.is_file():
            safe_extract_zip(submission, extracted, limits)
        else:
            raise Rejected(f"{submission} does not exist")
    except Rejected as err:
        report.update(status="rejected", grade="not graded", reasons=[str(err)])
        return report
    code = code_root(extracted)
    report["andrew_id"] = code.name if code != extracted else None

    run_dir = work / "run"
    (run_dir / "harness").mkdir(parents=True)
    (run_dir / "home").mkdir()
    shutil.copytree(code, run_dir / "code", ignore=shutil.ignore_patterns("__pycache__"))
    for path in HARNESS_FILES:
        shutil.copy2(path, run_dir / "harness" / path.name)
        (run_dir / "code" / path.name).unlink(missing_ok=True)  # the instructor's checks, not the submission's
    report["support_modules_from_solution"] = []
    for module in SUPPORT_MODULES:
        if not (run_dir / "code" / module).is_file():
            shutil.copy2(REPO_ROOT / module, run_dir / "code" / module)
            report["support_modules_from_solution"].append(module)

    report["checks"] = {}
    for check in ("rope", "optimizer", "sanity"):
        result = run_check(check, run_dir, args.reference_dir, args.variant, args.checkpoint, limits)
        report["checks"][check] = {"status": result.status, "detail": result.detail,
                                   "seconds": round(result.seconds, 2)}
    report["predictions"] = score_all(code, args.data_dir, args.variant)
    report["generations"] = generation_scores(code, scorer)
    return report


def write_reports(reports: list[dict], out: Path) -> None:
    (out / "reports").mkdir(parents=True, exist_ok=True)
    for report in reports:
        stem = out / "reports" / report["name"]
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
        stem.with_suffix(".md").write_text(markdown_report(report))
    columns = ["name", "andrew_id", "status", "grade", "rope", "optimizer", "sanity"]
    accuracy_columns = sorted({name for r in reports for name in r.get("predictions", {})})
    ppl_columns = [f"perplexity {name}" for name in GENERATION_FILES]
    with open(out / "grades.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns + accuracy_columns + ppl_columns + ["needs review", "reasons"])
        for r in reports:
            checks = r.get("checks", {})
            preds = r.get("predictions", {})
            gens = r.get("generations", {})
            writer.writerow(
                [r["name"], r.get("andrew_id") or "", r["status"], r.get("grade", ""),
                 *(checks.get(c, {}).get("status", "") for c in ("rope", "optimizer", "sanity")),
                 *(_cell(preds.get(name, {})) for name in accuracy_columns),
                 *(_cell(gens.get(name, {}), "perplexity") for name in GENERATION_FILES),
                 "yes" if any(e.get("flag") for e in gens.values()) else "",
                 " | ".join(r.get("reasons", []))])


def _cell(entry: dict, key: str = "accuracy") -> str:
    if "error" in entry:
        return entry["error"][:60]
    value = entry.get(key)
    return "" if value is None else f"{value:.3f}" if key == "accuracy" else f"{value:.2f}"


def markdown_report(report: dict) -> str:
    lines = [f"# Grading report: {report['name']}", "",
             f"- submission: `{report['submission']}`", f"- Andrew ID (top-level folder): {report.get('andrew_id')}",
             f"- course variant: {report['variant']}", f"- status: **{report['status']}**",
             f"- grade: **{report.get('grade', '')}**", ""]
    if report.get("reasons"):
        lines += ["## Why", ""] + [f"- {reason}" for reason in report["reasons"]] + [""]
    if report.get("checks"):
        lines += ["## Grader checks", "", "| check | status | detail | seconds |", "| --- | --- | --- | --- |"]
        lines += [f"| {name} | {c['status']} | {c['detail'].replace('|', '/')} | {c['seconds']} |"
                  for name, c in report["checks"].items()] + [""]
    if report.get("support_modules_from_solution"):
        lines += [f"Modules missing from the submission, taken from the solution: "
                  f"{', '.join(report['support_modules_from_solution'])}", ""]
    if report.get("predictions"):
        lines += ["## Predictions", "", "| file | accuracy | note |", "| --- | --- | --- |"]
        for name, score in report["predictions"].items():
            accuracy = score.get("accuracy")
            lines.append(f"| {name} | {'' if accuracy is None else f'{accuracy:.3f}'} | "
                         f"{score.get('error', score.get('note', ''))} |")
        lines.append("")
    if report.get("generations"):
        lines += ["## Generations (for a person to read)", ""]
        for name, entry in report["generations"].items():
            ppl = entry.get("perplexity")
            lines += [f"### {name}", "", f"- perplexity under the reference model: "
                      f"{'n/a' if ppl is None else f'{ppl:.2f}'}", f"- flag: {entry.get('flag', entry.get('error', 'none'))}",
                      "", "```", entry.get("excerpt", ""), "```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def find_data_dir() -> Path | None:
    candidates = [REPO_ROOT / "data"]
    if os.environ.get("MINLLAMA_ASSETS"):
        candidates.append(Path(os.environ["MINLLAMA_ASSETS"]) / "data")
    candidates.append(REPO_ROOT.parent / "shared" / "assets" / "data")
    return next((c for c in candidates if (c / "sst-dev.txt").is_file()), None)


def main(argv=None) -> int:
    # The solution's modules (perplexity model, tokenizer) and make_skeleton: never a submission's.
    sys.path[:0] = [str(REPO_ROOT), str(INSTRUCTOR_DIR)]
    from make_skeleton import find_assets

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("submissions", nargs="+", type=Path, help="zip files or folders")
    parser.add_argument("--out", type=Path, required=True, help="folder for the work files, reports and grades.csv")
    parser.add_argument("--variant", choices=list(REFERENCE_ACCURACY), default="layernorm",
                        help="course variant: its checks, files and reference table (default: layernorm)")
    parser.add_argument("--checkpoint", type=Path, default=REPO_ROOT / "stories42M.pt",
                        help="the model of the sanity check (default: stories42M.pt in the repository root)")
    parser.add_argument("--reference-dir", type=Path, default=None,
                        help="folder with the reference files under their explicit names (default: as make_skeleton)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the gold data (default: data/)")
    parser.add_argument("--perplexity-model", type=Path, default=None,
                        help="checkpoint scoring the generations (default: stories42M.pt, else SmolLM2)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer of --perplexity-model (default: tokenizer.model; a GGUF carries its own)")
    parser.add_argument("--max-perplexity", type=float, default=1000.0,
                        help="flag generations above this perplexity (default: 1000)")
    parser.add_argument("--timeout", type=float, default=Limits.timeout_s, help="seconds per check")
    parser.add_argument("--memory-mb", type=int, default=Limits.memory_mb, help="address-space limit per check")
    parser.add_argument("--max-files", type=int, default=Limits.max_files)
    parser.add_argument("--max-bytes", type=int, default=Limits.max_bytes)
    parser.add_argument("--jobs", type=int, default=1, help="submissions graded at the same time (default: 1)")
    args = parser.parse_args(argv)
    args.reference_dir = args.reference_dir or find_assets()
    args.data_dir = args.data_dir or find_data_dir()
    if args.reference_dir is None or args.data_dir is None:
        print("grade: reference files or gold data not found (--reference-dir, --data-dir)", file=sys.stderr)
        return 1
    limits = Limits(args.max_files, args.max_bytes, args.timeout, args.memory_mb)
    args.out.mkdir(parents=True, exist_ok=True)

    scorer_files = ((args.perplexity_model, args.tokenizer or (
        args.perplexity_model if args.perplexity_model.suffix == ".gguf" else REPO_ROOT / "tokenizer.model"))
        if args.perplexity_model else default_perplexity_model())
    scorer = PerplexityModel(*scorer_files) if scorer_files else None
    if scorer is None:
        print("grade: no reference model for perplexities; generations are listed for a person only", file=sys.stderr)

    names, taken = [], set()
    for submission in args.submissions:
        names.append(_unique_name(submission, taken))

    def grade_one(submission: Path, name: str) -> dict:
        try:
            report = grade_submission(submission, name, args, limits, scorer)
        except Exception as err:  # a grader bug on one submission must not stop the batch
            report = {"submission": str(submission), "name": name, "variant": args.variant,
                      "status": "grader error", "grade": "not graded", "reasons": [f"{type(err).__name__}: {err}"]}
        print(f"{name}: {report['status']}", flush=True)
        return report

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        reports = list(pool.map(grade_one, args.submissions, names))

    flag_generations(reports, args.max_perplexity)
    for report in reports:
        if report["status"] == "graded":
            report["grade"], report["reasons"] = apply_rubric(report, args.variant)
            report["perplexity_model"] = scorer.name if scorer else None
    write_reports(reports, args.out)
    for report in reports:
        print(f"{report['name']}: {report.get('grade')}  {'; '.join(report.get('reasons', []))[:200]}")
    print(f"reports in {args.out / 'reports'}, batch in {args.out / 'grades.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
