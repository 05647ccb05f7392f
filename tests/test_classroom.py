"""The GitHub Classroom workflow a skeleton carries (instructor/classroom.py), offline: its YAML
parses, it has one graded step per grader check with the course table's points and a reporter
that adds them up, and every step's command passes on the filled skeleton and fails on the
skeleton as students get it. stories42M.pt is not downloaded here: a tiny random model takes its
name, with the solution's sanity outputs on it as the course's sanity_check.data."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from config import LlamaConfig
from llama import Llama
from sanity_check import compute_outputs
from support.course import COURSES, GRADER_CHECKS, POINTS
from utils import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "instructor"))
import classroom  # noqa: E402
import make_skeleton as ms  # noqa: E402

pytestmark = pytest.mark.slow
VARIANT = "layernorm"


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """{"skeleton": the course's skeleton, "filled": the same with every region solved}, each set
    up as setup.sh leaves it (a .venv, stories42M.pt, the reference files)."""
    folder = tmp_path_factory.mktemp("classroom")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, dim=16, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=64)
    checkpoint = folder / "stories42M.pt"
    torch.save({"model_args": config.to_dict(), "model": Llama(config).state_dict()}, checkpoint)
    reference = compute_outputs(checkpoint, COURSES[VARIANT].norm)
    built = {}
    for name, blank in (("skeleton", None), ("filled", set())):
        tree = folder / name
        ms.build(tree, VARIANT, blank=blank)
        (tree / ".venv").symlink_to(REPO_ROOT.joinpath(".venv").resolve())
        (tree / "stories42M.pt").write_bytes(checkpoint.read_bytes())
        torch.save(reference, tree / "sanity_check.data")
        built[name] = tree
    return built


def graded_steps(text: str) -> list[dict]:
    steps = yaml.safe_load(text)["jobs"]["run-autograding-tests"]["steps"]
    return [step for step in steps if step.get("uses") == classroom.COMMAND_GRADER]


@pytest.mark.parametrize("variant", list(COURSES))
def test_one_graded_step_per_check_with_the_course_table_s_points(variant, trees):
    text = ((trees["skeleton"] / classroom.WORKFLOW).read_text() if variant == VARIANT
            else classroom.workflow(COURSES[variant]))
    workflow = yaml.safe_load(text)
    assert "push" in workflow["on"]
    steps = workflow["jobs"]["run-autograding-tests"]["steps"]
    graded = graded_steps(text)
    assert [step["id"] for step in graded] == list(GRADER_CHECKS)
    for step in graded:
        assert step["with"]["test-name"] == GRADER_CHECKS[step["id"]]
        assert step["with"]["max-score"] == POINTS[step["id"]]
        assert step["with"]["timeout"] > 0 and step["with"]["command"]
    reporter = steps[-1]
    assert reporter["uses"] == classroom.REPORTER and reporter["with"]["runners"] == ",".join(GRADER_CHECKS)
    assert reporter["env"] == {f"{check.upper()}_RESULTS": f"${{{{steps.{check}.outputs.result}}}}"
                               for check in GRADER_CHECKS}
    assert steps.index(reporter) > max(steps.index(step) for step in graded)


def test_every_step_passes_on_the_filled_skeleton_and_fails_on_the_unfilled_one(trees):
    env = {key: value for key, value in os.environ.items() if not key.startswith("MINLLAMA_")}
    for step in graded_steps((trees["skeleton"] / classroom.WORKFLOW).read_text()):
        for name, should_pass in (("filled", True), ("skeleton", False)):
            done = subprocess.run(["bash", "-c", step["with"]["command"]], cwd=trees[name], env=env,
                                  capture_output=True, text=True, timeout=300)
            assert (done.returncode == 0) == should_pass, (step["id"], name, done.stdout[-500:], done.stderr[-1500:])
