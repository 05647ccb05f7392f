"""Grade submissions: `python instructor/grade.py SUBMISSION [SUBMISSION ...] --out DIR`.

A SUBMISSION is a zip made by prepare_submit.py (one folder named after the Andrew ID) or a folder.
For each one this tool
  1. unpacks it safely into DIR/work/NAME (unpack.py: no absolute paths, `..`, symlinks or zip bombs);
  2. runs the grader checks (RoPE, AdamW, the sanity forward pass) on the submission's code, each
     in its own child process (grader_probe.py) inside a bubblewrap sandbox (sandbox.py: no
     network, a read-only system, only the submission's own copy writable, the reference files and
     the other submissions out of sight) with a time limit and a memory limit. The submission's
     code is never imported into this process: the child writes its outputs as plain arrays and
     this process compares them with the expected ones, of two kinds: the upstream reference
     files, and the solution's own outputs on inputs drawn for this run from a seed that only the
     reports record (drawn_inputs.py). A submission must match both, so reading or memorising the
     shipped answers does not pass;
  3. scores the prediction files against the gold labels (dev sets and the SST test set; the
     CFIMDB test labels are placeholders, so no accuracy is reported for them);
  4. measures the perplexity of the submitted generations under a reference model and flags
     outliers for a person to read: a program cannot judge coherence, and never grades on it alone;
  5. applies the upstream rubric (rubric.py: B+ when the sanity and optimizer checks pass, A when
     the accuracies are within the tolerance of the reference table too, A- between), gives every
     check and output file its points from the course table (support/course.py POINTS), and
     writes DIR/reports/NAME.json and NAME.md (reports.py), plus DIR/grades.csv for the batch;
     a submission whose files say it is for the other course (unpack.course_evidence) is reported
     as such and not graded;
  6. deletes the work folders (--keep keeps them).
A broken, hostile or hanging submission gets a report that says what happened; the batch goes on.
Without bubblewrap it refuses to grade, unless --container-fallback (as root: the checks run as an
unprivileged account) or --unsafe-no-sandbox (process limits only) says otherwise. Every path given
is made absolute first: the checks run in other folders. gradescope.py builds Gradescope's
autograder around this tool.
"""

import argparse
import functools
import os
import re
import secrets
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

INSTRUCTOR_DIR = Path(__file__).resolve().parent
REPO_ROOT = INSTRUCTOR_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
from checks import Expected, prepare_expected, run_check  # noqa: E402
from make_skeleton import source_files  # noqa: E402
from perplexity import PerplexityModel, default_perplexity_model, flag_generations  # noqa: E402
from reports import write_reports  # noqa: E402
from rubric import apply_rubric, generation_scores, score_all, scored_items, total  # noqa: E402
from shipping import STUDENT_TESTS, closure, follow_the_move, shipped_path  # noqa: E402
from sandbox import (UNSAFE_EXPLANATION, ContainerAccount, SandboxUnavailable, Unsandboxed,  # noqa: E402
                     find_bubblewrap, remove)
from support.course import (COURSES, GRADER_CHECKS, OPTIMIZER_REFERENCE, ROPE_REFERENCE,  # noqa: E402
                            SANITY_REFERENCE)
from unpack import ArchiveLimits, Rejected, code_root, course_evidence, safe_copy_folder, safe_extract_zip  # noqa: E402

COURSE_TABLE = "support/course.py"  # the instructor's copy, whatever a submission brings

# The instructor's copies of the checks, run against the submission's modules.
HARNESS_FILES = [REPO_ROOT / "rope_test.py", REPO_ROOT / "optimizer_test.py", REPO_ROOT / "sanity_check.py",
                 INSTRUCTOR_DIR / "grader_probe.py", INSTRUCTOR_DIR / "drawn_inputs.py"]


# An autograder built by gradescope.py is no git checkout: it lists the solution's files here.
SOLUTION_MANIFEST = REPO_ROOT / "solution-files.txt"


def solution_files() -> set[str]:
    """The solution's files: those git tracks, or the autograder's list of them."""
    if SOLUTION_MANIFEST.is_file():
        return set(SOLUTION_MANIFEST.read_text().split())
    return set(source_files(REPO_ROOT))


@functools.lru_cache(maxsize=None)
def support_modules(variant: str) -> tuple[str, ...]:
    """The modules students do not write, as the course's skeleton has them (shipping.py: the
    closure of its entry points, less the student code): taken from the solution when a submission
    lacks them, and the course table always (the checks read it)."""
    course = COURSES[variant]
    files = solution_files()
    shipped = closure(course, lambda path: (REPO_ROOT / path).read_text(), files)
    return tuple(path for path in shipped if path.endswith(".py") and path not in course.student_code
                 and not path.startswith(STUDENT_TESTS) and REPO_ROOT / path not in HARNESS_FILES)

# The course variants (course.py): the norm of the sanity reference and the max_grad_norm of the optimizer reference.
VARIANT_CHECKS = {name: (c.norm, c.max_grad_norm) for name, c in COURSES.items()}
REFERENCE_FILES = {"rope": ROPE_REFERENCE,
                   "optimizer": {c.max_grad_norm: c.explicit_reference(OPTIMIZER_REFERENCE) for c in COURSES.values()},
                   "sanity": {c.norm: c.explicit_reference(SANITY_REFERENCE) for c in COURSES.values()}}
# The course's checkpoint: the only one the upstream sanity references were made with.
UPSTREAM_CHECKPOINT = REPO_ROOT / "stories42M.pt"
# The reference files under every name they ship with (the skeleton uses the upstream names):
# deleted from the copy a check runs on.
SHIPPED_REFERENCES = sorted({name for c in COURSES.values() for pair in c.references for name in pair})


# ----------------------------------------------------------------------------- one submission

def _unique_name(submission: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", submission.name.removesuffix(".zip")) or "submission"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def prepare_run_folder(code: Path, run_dir: Path, variant: str) -> list[str]:
    """The copy a check runs on: the submission without reference files or its own copies of the
    checks, plus the instructor's harness; returns the support modules taken from the solution."""
    for folder in ("harness", "tmp", "out"):
        (run_dir / folder).mkdir(parents=True)
    shutil.copytree(code, run_dir / "code", ignore=shutil.ignore_patterns("__pycache__"))
    for name in SHIPPED_REFERENCES:
        remove(run_dir / "code" / name)
    for path in HARNESS_FILES:
        (run_dir / "harness" / path.name).write_text(follow_the_move(path.read_text()))
        remove(run_dir / "code" / path.name)  # the instructor's checks, not the submission's
    for path in (run_dir / "code").rglob("*.py"):  # a file in the solution's layout imports support.X
        path.write_text(follow_the_move(path.read_text()))
    taken = []
    for module in support_modules(variant):
        target = run_dir / "code" / shipped_path(module)
        if not target.is_file() or module == COURSE_TABLE:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(follow_the_move((REPO_ROOT / module).read_text()))
            taken.append(shipped_path(module))
    return taken


def grade_submission(submission: Path, name: str, args, expected: dict[str, Expected], sandbox, scorer) -> dict:
    report = {"submission": str(submission), "name": name, "variant": args.variant, "status": "graded",
              "seed": args.seed}
    work = args.out / "work" / name
    remove(work)
    extracted = work / "extracted"
    limits = ArchiveLimits(args.max_files, args.max_bytes)
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
    report["course_evidence"] = evidence = course_evidence(code)
    if evidence and args.variant not in evidence:  # another course's files, and nothing of this one's
        course, said = next(iter(evidence.items()))
        report.update(status="wrong course", grade="not graded", reasons=[
            f"This submission is for the {course} course ({'; '.join(said)}), but it is graded as the "
            f"{args.variant} course: grade it with --variant {course}."])
        return report
    report["missing_student_files"] = [name for name in COURSES[args.variant].student_code
                                       if not (code / name).is_file()]
    report["support_modules_from_solution"] = prepare_run_folder(code, work / "run", args.variant)

    report["checks"] = {}
    for check in GRADER_CHECKS:
        if check not in expected:
            report["checks"][check] = {"status": "skipped", "detail": "no checkpoint for the sanity check "
                                       f"({UPSTREAM_CHECKPOINT.name} not found; give --checkpoint)"}
            continue
        result = run_check(check, expected[check], work / "run", sandbox, args.timeout, args.memory_mb)
        report["checks"][check] = {"status": result.status, "detail": result.detail,
                                   "seconds": round(result.seconds, 2), "sandbox": sandbox.description,
                                   "compared with": [answer.source for answer in expected[check].answers]}
        if check == "sanity":
            report["checks"][check]["checkpoint"] = str(args.checkpoint)
    report["predictions"] = score_all(code, args.data_dir, args.variant)
    report["generations"] = generation_scores(code, scorer)
    return report


# ----------------------------------------------------------------------------- main

def find_data_dir() -> Path | None:
    candidates = [REPO_ROOT / "data"]
    if os.environ.get("MINLLAMA_ASSETS"):
        candidates.append(Path(os.environ["MINLLAMA_ASSETS"]) / "data")
    candidates.append(REPO_ROOT.parent / "shared" / "assets" / "data")
    return next((c for c in candidates if (c / "sst-dev.txt").is_file()), None)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("submissions", nargs="+", type=Path, help="zip files or folders")
    parser.add_argument("--out", type=Path, required=True, help="folder for the work files, reports and grades.csv")
    parser.add_argument("--variant", choices=list(COURSES), default="layernorm",
                        help="course variant: its checks, files and reference table (default: layernorm)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the model of the sanity check (default: stories42M.pt in the repository root, the "
                             "only one with an upstream reference; any other is compared with the solution on it)")
    parser.add_argument("--reference-dir", type=Path, default=None,
                        help="folder with the reference files under their explicit names (default: as make_skeleton)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the gold data (default: data/)")
    parser.add_argument("--perplexity-model", type=Path, default=None,
                        help="checkpoint scoring the generations (default: stories42M.pt, else SmolLM2)")
    parser.add_argument("--no-perplexity-model", action="store_true",
                        help="no reference model: the generations are listed for a person only")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer of --perplexity-model (default: tokenizer.model; a GGUF carries its own)")
    parser.add_argument("--max-perplexity", type=float, default=1000.0,
                        help="flag generations above this perplexity (default: 1000)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per check (default: 900)")
    parser.add_argument("--memory-mb", type=int, default=8192, help="address-space limit per check (default: 8192)")
    parser.add_argument("--max-files", type=int, default=ArchiveLimits.max_files)
    parser.add_argument("--max-bytes", type=int, default=ArchiveLimits.max_bytes)
    parser.add_argument("--jobs", type=int, default=1, help="submissions graded at the same time (default: 1)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the drawn inputs (default: a new one per run; the reports record it)")
    parser.add_argument("--keep", action="store_true", help="keep the work folders (default: deleted after grading)")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="grade without bubblewrap, with process limits only (see the warning it prints)")
    parser.add_argument("--container-fallback", action="store_true",
                        help="where bubblewrap cannot start, run the checks as an unprivileged account "
                             "(needs root: Gradescope's container; every report says so)")
    return parser.parse_args(argv)


def choose_sandbox(args):
    """bubblewrap; where it cannot start, the container mode if asked for (--container-fallback);
    else None, after saying why, unless the user opted out of a sandbox."""
    if args.unsafe_no_sandbox:
        print(f"grade: warning: --unsafe-no-sandbox: {UNSAFE_EXPLANATION}", file=sys.stderr)
        return Unsandboxed()
    try:
        return find_bubblewrap()
    except SandboxUnavailable as err:
        reason = err
    if args.container_fallback:
        try:
            mode = ContainerAccount(str(reason), private=[args.reference_dir, args.data_dir])
            print(f"grade: {mode.description}", file=sys.stderr)
            return mode
        except (SandboxUnavailable, OSError) as err:  # OSError: the references cannot be made private
            reason = err
    print(f"grade: {reason}, so submissions cannot be run in a sandbox; refusing to grade.\n"
          f"  `--unsafe-no-sandbox` grades anyway, and that means: {UNSAFE_EXPLANATION}"
          + ("" if args.container_fallback else "; as root in a container, --container-fallback runs the checks "
             "as an unprivileged account"), file=sys.stderr)
    return None


def check_inputs(args) -> str | None:
    """The first problem with the reference files or the checkpoint, before any work; warns when
    the sanity check cannot run."""
    from sanity_check import CHECKPOINT_HINT
    if args.checkpoint is None and UPSTREAM_CHECKPOINT.is_file():
        args.checkpoint = UPSTREAM_CHECKPOINT
    elif args.checkpoint is None:
        print(f"grade: warning: {UPSTREAM_CHECKPOINT} not found and no --checkpoint given: the sanity check "
              f"is skipped, so no submission gets more than 'B or below'. {CHECKPOINT_HINT}; or give "
              "--checkpoint PT (any Llama checkpoint: the sanity check then compares with the solution on it).",
              file=sys.stderr)
    elif not args.checkpoint.is_file():
        return f"--checkpoint {args.checkpoint} not found"
    elif args.checkpoint.name != UPSTREAM_CHECKPOINT.name:
        print(f"grade: the sanity check runs on {args.checkpoint} and compares with the solution's outputs on it "
              f"(the upstream reference is {UPSTREAM_CHECKPOINT.name}'s)", file=sys.stderr)
    norm, max_grad_norm = VARIANT_CHECKS[args.variant]
    upstream_sanity = args.checkpoint is not None and args.checkpoint.name == UPSTREAM_CHECKPOINT.name
    args.references = {"rope": args.reference_dir / REFERENCE_FILES["rope"],
                       "optimizer": args.reference_dir / REFERENCE_FILES["optimizer"][max_grad_norm],
                       "sanity": args.reference_dir / REFERENCE_FILES["sanity"][norm] if upstream_sanity else None}
    missing = [path.name for path in args.references.values() if path is not None and not path.is_file()]
    return f"reference files not found in {args.reference_dir}: {', '.join(missing)}" if missing else None


def main(argv=None) -> int:
    # The solution's modules (perplexity model, tokenizer) and make_skeleton: never a submission's.
    sys.path[:0] = [str(REPO_ROOT), str(INSTRUCTOR_DIR)]
    from make_skeleton import find_assets

    args = parse_args(argv)
    args.reference_dir = args.reference_dir or find_assets()
    args.data_dir = args.data_dir or find_data_dir()
    if args.reference_dir is None or args.data_dir is None:
        print("grade: reference files or gold data not found (--reference-dir, --data-dir)", file=sys.stderr)
        return 1
    # Absolute paths: the checks run in other folders (and a sandbox sees none of this one).
    for flag in ("out", "reference_dir", "data_dir", "checkpoint", "perplexity_model", "tokenizer"):
        if getattr(args, flag) is not None:
            setattr(args, flag, getattr(args, flag).absolute())
    args.submissions = [submission.absolute() for submission in args.submissions]
    problem = check_inputs(args)
    if problem:
        print(f"grade: {problem}", file=sys.stderr)
        return 1
    sandbox = choose_sandbox(args)
    if sandbox is None:
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    print(f"grade: the checks also run on inputs drawn with seed {args.seed} (--seed {args.seed} repeats them)")
    expected = prepare_expected(args.references, *VARIANT_CHECKS[args.variant], args.checkpoint, args.seed,
                                args.out / "drawn-inputs")

    scorer_files = None if args.no_perplexity_model else ((args.perplexity_model, args.tokenizer or (
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
            report = grade_submission(submission, name, args, expected, sandbox, scorer)
        except Exception as err:  # a grader bug on one submission must not stop the batch
            report = {"submission": str(submission), "name": name, "variant": args.variant,
                      "status": "grader error", "grade": "not graded", "reasons": [f"{type(err).__name__}: {err}"]}
        finally:
            if not args.keep:
                remove(args.out / "work" / name)
        print(f"{name}: {report['status']}", flush=True)
        return report

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        reports = list(pool.map(grade_one, args.submissions, names))
    if not args.keep:
        remove(args.out / "drawn-inputs")
        remove(args.out / "work")

    flag_generations(reports, args.max_perplexity)
    for report in reports:
        if report["status"] == "graded":
            report["grade"], report["reasons"] = apply_rubric(report, args.variant)
            items = scored_items(report, args.variant)
            report["points"] = {item.name: {"score": item.score, "max_score": item.max_score, "output": item.output}
                                for item in items}
            report["score"], report["max_score"] = total(items)
            report["perplexity_model"] = scorer.name if scorer else None
    write_reports(reports, args.out)
    for report in reports:
        print(f"{report['name']}: {report.get('grade')}  {'; '.join(report.get('reasons', []))[:200]}")
    print(f"reports in {args.out / 'reports'}, batch in {args.out / 'grades.csv'}"
          + ("" if args.keep else "; work folders deleted (--keep keeps them)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
