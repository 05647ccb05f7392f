"""Gradescope's autograder (instructor/gradescope.py builds it, gradescope_results.py runs in it),
end to end: the zip is built, unpacked into a temporary /autograder-shaped folder (the
repository's code then lies under /tmp, which the sandbox mounts privately), and run_autograder
grades a correct submission (the zip prepare_submit.py makes: the student files and the outputs), a broken one (a wrong RoPE) and a
hostile one (it tries to plant code in the autograder and to read the references), each checked
field by field in results.json. The hostile one is graded twice: in bubblewrap, and in the
container mode, where no bwrap is on the PATH (as root only: the mode runs the checks as nobody)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from support.course import COURSES
from testkit import skip_or_fail, solution_code, write_submission, zip_folder
from utils import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "instructor"))
import gradescope  # noqa: E402
import gradescope_results  # noqa: E402
import grade  # noqa: E402

TOP_LEVEL = {"score", "execution_time", "output", "visibility", "stdout_visibility", "tests", "leaderboard"}
TEST_FIELDS = {"name", "score", "max_score", "status", "output", "visibility"}
POINTS = COURSES["layernorm"].points()

HOSTILE = '''
try:
    with open({root!r} + "/source/instructor/rubric.py", "a") as planted:
        planted.write("\\nplanted = True\\n")
except OSError as err:
    print("could not plant code:", err)
open({root!r} + "/source/references/rotary_embedding_actual.data", "rb").read()
'''


@pytest.fixture(scope="module")
def autograder():
    """grade(name, upload, container=False) -> (results.json, seconds): run_autograder on one upload."""
    data_dir = grade.find_data_dir()
    if data_dir is None or shutil.which("bwrap") is None:
        skip_or_fail("gold data or bubblewrap not found (run setup.sh; apt-get install bubblewrap)")
    # Not under pytest's base folder: another pytest session makes that private again (0700)
    # whenever it starts, which would lock the container mode's account out mid-run.
    tmp = Path(tempfile.mkdtemp(prefix="minllama-gradescope-"))
    assert gradescope.main(["--variant", "layernorm", "--out", str(tmp / "autograder.zip")]) == 0
    root = tmp / "autograder"
    with zipfile.ZipFile(tmp / "autograder.zip") as archive:
        names = archive.namelist()
        archive.extractall(root / "source")
    assert {"setup.sh", "run_autograder"} <= set(names)
    shutil.copy(root / "source" / "run_autograder", root / "run_autograder")
    without_bwrap = tmp / "bin"  # a container where bubblewrap is not installed
    without_bwrap.mkdir()
    for tool in ("bash", "setpriv", "kill"):
        (without_bwrap / tool).symlink_to(shutil.which(tool))
    (without_bwrap / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')  # keeps the venv
    (without_bwrap / "python3").chmod(0o755)

    def run(name: str, upload: Path, container: bool = False):
        for folder in ("submission", "results"):
            shutil.rmtree(root / folder, ignore_errors=True)
        (root / "submission").mkdir()
        if upload.is_file():
            shutil.copy(upload, root / "submission" / upload.name)
        else:
            shutil.copytree(upload, root / "submission", dirs_exist_ok=True)
        path = str(without_bwrap) if container else f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        start = time.monotonic()
        done = subprocess.run(["bash", str(root / "run_autograder")], capture_output=True, text=True, timeout=600,
                              env={"AUTOGRADER_ROOT": str(root), "PATH": path, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr
        return json.loads((root / "results" / "results.json").read_text()), time.monotonic() - start

    planted = root / "source" / "instructor" / "rubric.py"
    before = hashlib.sha256(planted.read_bytes()).hexdigest()
    student_code = set(COURSES["layernorm"].student_code)  # what prepare_submit.py zips, with the outputs
    builds = {"correct": {name: None for name in solution_code() if name not in student_code},
              "broken-rope": {"rope.py": (REPO_ROOT / "rope.py").read_text().replace(
                  "x_even * c - x_odd * s, x_even * s + x_odd * c", "x_even * c + x_odd * s, x_even * s + x_odd * c")},
              "hostile": {"utils.py": (REPO_ROOT / "utils.py").read_text() + HOSTILE.format(root=str(root))}}
    uploads = {name: write_submission(tmp / "build" / name, data_dir, lambda label, n: label, code).parent
               for name, code in builds.items()}
    uploads["correct"] = zip_folder(uploads["correct"], tmp / "student1.zip")  # as prepare_submit.py makes it
    graded = {name: run(name, upload) for name, upload in uploads.items()}
    if os.geteuid() == 0:
        graded["hostile in a container"] = run("hostile", uploads["hostile"], container=True)
    yield {"graded": graded, "planted": lambda: hashlib.sha256(planted.read_bytes()).hexdigest() == before,
           "root": root}
    grade.remove(tmp)


def by_name(results: dict) -> dict:
    return {test["name"]: test for test in results["tests"]}


@pytest.mark.slow
def test_results_json_of_a_correct_submission(autograder):
    results, seconds = autograder["graded"]["correct"]
    assert set(results) == TOP_LEVEL
    assert results["visibility"] == "visible" and results["stdout_visibility"] == "hidden"
    assert 0 < results["execution_time"] <= seconds
    first = results["tests"][0]
    assert first == {"name": "Submission format", "score": 0, "max_score": 0, "status": "passed",
                     "output": first["output"], "visibility": "visible"}
    assert "Graded the folder student1/." in first["output"] and "of the course's own code" in first["output"]
    assert len(results["tests"]) == 1 + len(POINTS)
    for test in results["tests"]:
        assert set(test) == TEST_FIELDS and test["status"] == "passed" and test["score"] == test["max_score"], test
    assert [test["max_score"] for test in results["tests"][1:]] == list(POINTS.values())
    assert results["score"] == sum(POINTS.values()) == 120
    assert results["output"].startswith("Score 120 of 120 points; grade by the upstream rubric: A.")
    assert "small random model built by gradescope.py" in results["output"]  # which checkpoint: in every report
    assert "Your code ran in: bubblewrap" in results["output"]
    assert {entry["name"] for entry in results["leaderboard"]} == {
        f"{dataset}-dev-{run}" for dataset in ("sst", "cfimdb") for run in ("prompting", "finetuning", "lora")}
    assert all(entry["value"] == 1.0 and entry["order"] == "desc" for entry in results["leaderboard"])


@pytest.mark.slow
def test_a_wrong_rope_loses_the_rope_and_sanity_points(autograder):
    results, _ = autograder["graded"]["broken-rope"]
    tests = by_name(results)
    failed = {name for name, test in tests.items() if test["status"] == "failed"}
    assert failed == {"RoPE check (rope_test.py)", "sanity check (sanity_check.py)"}
    rope = tests["RoPE check (rope_test.py)"]
    assert rope["score"] == 0 and "max abs difference" in rope["output"]
    assert results["score"] == 120 - POINTS["rope"] - POINTS["sanity"]
    assert "grade by the upstream rubric: B or below." in results["output"]
    assert "The RoPE check (rope_test.py) failed" in results["output"]


@pytest.mark.slow
@pytest.mark.parametrize("run, evidence", [("hostile", "No such file or directory"),
                                           ("hostile in a container", "Permission denied")])
def test_a_hostile_submission_gets_no_check_points_and_changes_nothing(autograder, run, evidence):
    if run not in autograder["graded"]:
        pytest.skip("the container mode needs root")
    results, _ = autograder["graded"][run]
    tests = by_name(results)
    for name in ("RoPE check (rope_test.py)", "optimizer check (optimizer_test.py)", "sanity check (sanity_check.py)"):
        assert tests[name]["score"] == 0 and evidence in tests[name]["output"], tests[name]
        assert "rotary_embedding_actual.data" in tests[name]["output"]
    outputs = sum(points for name, points in POINTS.items() if name.endswith(".txt"))
    assert results["score"] == outputs  # its prediction and generation files are fine
    assert autograder["planted"](), "the submission changed the autograder's code"
    if run == "hostile in a container":
        assert "Your code ran in: container mode (bubblewrap cannot run here: bubblewrap (bwrap) is not installed)" \
            in results["output"] and "nobody" in results["output"]


def test_a_malformed_upload_fails_the_visible_format_entry_and_earns_nothing():
    report = {"status": "rejected", "grade": "not graded",
              "reasons": ["symbolic link in the archive: 'student1/llama.py'"]}
    results = gradescope_results.results(report, "layernorm", 1.5, "stories42M.pt, against the upstream reference")
    assert set(results) == TOP_LEVEL and results["score"] == 0 and results["leaderboard"] == []
    first = results["tests"][0]
    assert first["name"] == "Submission format" and first["status"] == "failed" and first["visibility"] == "visible"
    assert "symbolic link in the archive" in first["output"]
    assert [test["max_score"] for test in results["tests"][1:]] == list(POINTS.values())
    assert all(test["score"] == 0 and test["status"] == "failed" for test in results["tests"][1:])
    assert "The sanity check ran on stories42M.pt, against the upstream reference." in results["output"]


def test_the_upload_is_the_one_zip_or_the_folder(tmp_path):
    (tmp_path / "student1.zip").write_bytes(b"")
    assert gradescope_results.find_submission(tmp_path) == tmp_path / "student1.zip"
    (tmp_path / "llama.py").write_text("")
    assert gradescope_results.find_submission(tmp_path) == tmp_path
