"""Gradescope mode: `python instructor/gradescope_results.py [AUTOGRADER_ROOT]` (default /autograder).

run_autograder (gradescope.py builds it) runs this for every submission. It grades
ROOT/submission, the folder Gradescope fills with the student's upload (the files themselves, or
the one zip prepare_submit.py made), with grade.py and this autograder's variant, references, gold
data and checkpoint (source/autograder.json), then writes ROOT/results/results.json in Gradescope's
format (https://gradescope-autograders.readthedocs.io/en/latest/specs/):

    score, execution_time, output      the points, the seconds, the letter of the upstream rubric
                                       beside the score, the reasons, the sandbox, the checkpoint
    visibility, stdout_visibility      the results are visible to the student, the log is not
    tests                              "Submission format" first, then one entry per grader check and
                                       per output file: name, score, max_score, status, output, visibility
    leaderboard                        the dev-set accuracies: name, value, order

bubblewrap is tried at start-up; where it cannot run (a container without user namespaces), the
checks run in the container mode (sandbox.ContainerAccount), and every report says so. Where
neither can run, nothing of the submission runs: results.json says why, with no points.
"""

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

INSTRUCTOR_DIR = Path(__file__).resolve().parent
SOURCE = INSTRUCTOR_DIR.parent
sys.path[:0] = [str(SOURCE), str(INSTRUCTOR_DIR)]
import grade  # noqa: E402
from reports import write_atomically  # noqa: E402
from sandbox import remove  # noqa: E402
from support.course import COURSES, GRADER_CHECKS  # noqa: E402



def find_submission(folder: Path) -> Path:
    """The upload: the one zip in the folder if that is all it holds, else the folder itself."""
    entries = [path for path in folder.iterdir() if not path.name.startswith(".")] if folder.is_dir() else []
    return entries[0] if len(entries) == 1 and entries[0].suffix == ".zip" else folder


def format_entry(report: dict, variant: str) -> dict:
    """The visible first test: could the upload be graded, and what was missing from it."""
    if report.get("status") != "graded":
        problems = report.get("reasons", [])
    else:
        course = COURSES[variant]
        code_files = [name for name in course.student_code if name in report["missing_student_files"]]
        problems = [f"Missing student files: {', '.join(code_files)}."] if code_files else []
        missing = [name for name, entry in {**report.get("predictions", {}), **report.get("generations", {})}.items()
                   if entry.get("error") == "missing"]
        problems += [f"Missing output files: {', '.join(missing)}."] if missing else []
    found = (f"Graded the folder {report['andrew_id']}/." if report.get("andrew_id")
             else "Graded the files at the top of the upload (prepare_submit.py puts them in a folder named after "
                  "your Andrew ID).")
    lines = [found] if report.get("status") == "graded" else []
    if report.get("support_modules_from_solution"):
        lines.append(f"{len(report['support_modules_from_solution'])} files of the course's own code (not yours to "
                     "write) were taken from the course, as the skeleton has them.")
    return {"name": "Submission format", "score": 0, "max_score": 0, "status": "failed" if problems else "passed",
            "output": "\n".join(problems + lines), "visibility": "visible"}


def item_entries(report: dict, variant: str) -> list[dict]:
    """One entry per grader check and output file, with the points the report gave it (none when
    the submission was not graded)."""
    entries = []
    for name, most in COURSES[variant].points().items():
        item = report.get("points", {}).get(name, {"score": 0, "output": f"Not graded: {report.get('status')}."})
        entries.append({"name": GRADER_CHECKS.get(name, name), "score": item["score"], "max_score": most,
                        "status": "passed" if item["score"] == most else "failed", "output": item["output"],
                        "visibility": "visible"})
    return entries


def leaderboard(report: dict) -> list[dict]:
    return [{"name": name.removesuffix("-output.txt"), "value": round(entry["accuracy"], 4), "order": "desc"}
            for name, entry in report.get("predictions", {}).items()
            if "-dev-" in name and entry.get("accuracy") is not None]


def results(report: dict, variant: str, seconds: float, sanity_runs_on: str) -> dict:
    tests = [format_entry(report, variant), *item_entries(report, variant)]
    score, most = sum(t["score"] for t in tests), sum(t["max_score"] for t in tests)
    sandboxes = sorted({c["sandbox"] for c in report.get("checks", {}).values() if "sandbox" in c})
    lines = [f"Score {score:g} of {most:g} points; grade by the upstream rubric: {report.get('grade', 'not graded')}.",
             *report.get("reasons", []),
             f"The sanity check ran on {sanity_runs_on}.",
             *(f"Your code ran in: {sandbox}." for sandbox in sandboxes)]
    if report.get("seed") is not None:
        lines.append(f"The checks also ran on inputs drawn for this run (seed {report['seed']}).")
    return {"score": score, "execution_time": round(seconds, 1), "output": "\n".join(lines),
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests, "leaderboard": leaderboard(report)}


def grade_upload(root: Path) -> tuple[dict, str]:
    """grade.py on the upload; returns its report (or one saying why there is none) and its log."""
    config = json.loads((SOURCE / "autograder.json").read_text())
    out = root / "grading"
    remove(out)
    submission = find_submission(root / "submission")
    argv = [str(submission), "--out", str(out), "--variant", config["variant"],
            "--checkpoint", str(SOURCE / config["checkpoint"]), "--reference-dir", str(SOURCE / "references"),
            "--data-dir", str(SOURCE / "data"), "--timeout", str(config["timeout_s"]), "--container-fallback"]
    model = SOURCE / config["checkpoint"]
    argv += (["--perplexity-model", str(model), "--tokenizer", str(SOURCE / "tokenizer.model")]
             if (SOURCE / "tokenizer.model").is_file() else ["--no-perplexity-model"])
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        code = grade.main(argv)
    reports = sorted((out / "reports").glob("*.json")) if code == 0 else []
    if not reports:
        report = {"status": "not graded", "grade": "not graded",
                  "reasons": ["The autograder could not grade this submission, and none of its code ran: "
                              + " ".join(log.getvalue().split())[-600:]]}
    else:
        report = json.loads(reports[0].read_text())
    return report, log.getvalue()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else os.environ.get("AUTOGRADER_ROOT", "/autograder")).absolute()
    start = time.monotonic()
    report, log = grade_upload(root)
    print(log, file=sys.stderr)  # Gradescope keeps it for the instructor (results/stdout)
    config = json.loads((SOURCE / "autograder.json").read_text())
    (root / "results").mkdir(parents=True, exist_ok=True)
    write_atomically(root / "results" / "results.json",
           json.dumps(results(report, config["variant"], time.monotonic() - start, config["sanity_check_runs_on"]),
                      indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
