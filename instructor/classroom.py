"""The GitHub Classroom workflow a skeleton carries (make_skeleton.py writes it): WORKFLOW.

An assignment made in GitHub Classroom from the skeleton runs this workflow on every push of a
student's repository. It sets the course up (setup.sh: the Python packages with the CPU build of
torch, the data, stories42M.pt and the reference files), then runs one graded step per grader check
through classroom-resources/autograding-command-grader: the step passes, and earns its `max-score`,
when its command exits 0. classroom-resources/autograding-grading-reporter adds the steps up for
the Classroom: it reads each step's `result` output from the environment variable <ID>_RESULTS,
for the ids its `runners` input lists. The points are the course table's (support/course.py POINTS).

The steps run the student's own copies of the checks, in the student's own repository: this is
feedback with points, not the sandboxed grading of grade.py (which also checks on drawn inputs).
The YAML is written as text (every string quoted as JSON, which YAML reads), so that building a
skeleton needs no YAML library.
"""

import json

from support.course import GRADER_CHECKS, POINTS, Course

WORKFLOW = ".github/workflows/classroom.yml"
COMMAND_GRADER = "classroom-resources/autograding-command-grader@v1"
REPORTER = "classroom-resources/autograding-grading-reporter@v1"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # the runners have no GPU
CHECK_SCRIPTS = {"rope": "rope_test.py", "optimizer": "optimizer_test.py", "sanity": "sanity_check.py"}
TIMEOUT_MINUTES = 10


def check_command(check: str) -> str:
    """The command of a check's step, run in the repository's root after setup.sh."""
    return f".venv/bin/python {CHECK_SCRIPTS[check]}"


def workflow(course: Course) -> str:
    """The workflow's YAML for `course`'s skeleton."""
    q = json.dumps
    lines = ["# GitHub Classroom's autograding: one graded step per grader check (points: the course table,",
             f"# support/course.py POINTS). Written by instructor/make_skeleton.py for the {course.name} course.",
             "name: Autograding Tests",
             '"on": [push, repository_dispatch]',
             "permissions:", "  checks: write", "  actions: read", "  contents: read",
             "jobs:", "  run-autograding-tests:", "    runs-on: ubuntu-latest",
             "    if: github.actor != 'github-classroom[bot]'",
             "    steps:",
             "      - name: Checkout code", "        uses: actions/checkout@v4",
             "      - name: Set up the course (packages, data, stories42M.pt, reference files)",
             "        run: bash setup.sh", "        env:", f"          MINLLAMA_TORCH_INDEX: {q(CPU_TORCH_INDEX)}"]
    for check, title in GRADER_CHECKS.items():
        lines += [f"      - name: {q(title)}", f"        id: {check}", f"        uses: {COMMAND_GRADER}",
                  "        with:", f"          test-name: {q(title)}", f"          command: {q(check_command(check))}",
                  f"          timeout: {TIMEOUT_MINUTES}", f"          max-score: {POINTS[check]}"]
    lines += ["      - name: Autograding Reporter", f"        uses: {REPORTER}", "        env:"]
    lines += [f"          {check.upper()}_RESULTS: {q('${{steps.' + check + '.outputs.result}}')}"
              for check in GRADER_CHECKS]
    lines += ["        with:", f"          runners: {','.join(GRADER_CHECKS)}"]
    return "\n".join(lines) + "\n"
