"""Run checks inside student repositories, many in one process: `python tests/tree_checks.py JOBS RESULTS`.

The instructor tests check dozens of trees written by instructor/make_skeleton.py (one per
solution region for the coverage guarantee). A process per check would pay for starting Python and
importing torch and pytest every time, which is most of the cost, so this program runs them all in
one process, a child of the test (never inside pytest's own process, whose imported solution
modules must not mix with a tree's).

JOBS is a JSON list of {"tree": DIR, "imports": bool, "scripts": [[SCRIPT, ARG, ...], ...],
"pytest": [ARG, ...] or null}. For each job, in turn, with the tree as working directory and at the
head of sys.path, and none of the modules a previous tree provided:
  imports    import every top-level module of the tree (the skeleton must import);
  scripts    run each script as `python SCRIPT ARG...` would (runpy, as __main__);
  pytest     run pytest with these arguments (pytest.main, in this process).
RESULTS is a JSON list, one entry per job: {"import_errors": {MODULE: TRACEBACK}, "scripts":
[{"argv", "exit", "output"}], "pytest": {"exit", "failures": [{"test", "text"}], "output"} or null}.
"""

import contextlib
import importlib
import io
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

import pytest


def forget_modules(tree: Path) -> None:
    """Drop from sys.modules every module loaded from `tree`, so the next tree's are imported afresh."""
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(tree):
            del sys.modules[name]


def import_errors(tree: Path) -> dict[str, str]:
    errors = {}
    for path in sorted(tree.glob("*.py")):
        try:
            importlib.import_module(path.stem)
        except Exception:  # any failure to import is what we report
            errors[path.stem] = traceback.format_exc()
    return errors


def run_script(argv: list[str]) -> dict:
    """Run a Python script as its command line would; its exit status and its output (with the
    traceback of an exception that ends it)."""
    output, saved_argv = io.StringIO(), sys.argv
    sys.argv = list(argv)
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit_:  # sys.exit(None | status | message), as the interpreter reads it
        code = exit_.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            output.write(f"{code}\n")
            code = 1
    except Exception:  # the script failed: that is a result, not an error of this program
        output.write(traceback.format_exc())
        code = 1
    finally:
        sys.argv = saved_argv
    return {"argv": argv, "exit": code, "output": output.getvalue()}


class FailureCollector:
    """A pytest plugin that keeps every failed test (or collection) with its error text."""

    def __init__(self):
        self.failures = []

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failures.append({"test": report.nodeid, "text": report.longreprtext})

    def pytest_collectreport(self, report):
        if report.failed:
            self.failures.append({"test": report.nodeid or "collection", "text": report.longreprtext})


def run_pytest(args: list[str]) -> dict:
    collector, output = FailureCollector(), io.StringIO()
    with contextlib.redirect_stdout(output):
        code = pytest.main(list(args), plugins=[collector])
    return {"exit": int(code), "failures": collector.failures, "output": output.getvalue()[-5000:]}


def run_job(job: dict) -> dict:
    tree = Path(job["tree"]).resolve()
    saved_path, saved_cwd = list(sys.path), os.getcwd()
    sys.path.insert(0, str(tree))
    os.chdir(tree)
    try:
        return {"import_errors": import_errors(tree) if job.get("imports") else {},
                "scripts": [run_script(argv) for argv in job.get("scripts", [])],
                "pytest": run_pytest(job["pytest"]) if job.get("pytest") is not None else None}
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        forget_modules(tree)


def main() -> None:
    jobs_file, results_file = map(Path, sys.argv[1:3])
    sys.dont_write_bytecode = True  # leave the trees as they were written
    results = [run_job(job) for job in json.loads(jobs_file.read_text())]
    results_file.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
