"""The students' progress summary (minllama/tools/progress.py): its table of pieces is every region
of the course files, each with student checks; and, in a real skeleton built by make_skeleton.py,
unfilled, half filled (one piece written wrong) and filled by fill_skeleton.py, what
`python -m minllama.tools.progress` and the end of `python -m pytest tests/student` say."""

import ast
import shutil
import subprocess
import sys

import pytest

from minllama.tools.progress import PIECES, is_todo
from support.course import SOLUTION_ONLY
from testkit import asset_dirs, skip_or_fail
from utils import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "instructor"))
import make_skeleton as ms  # noqa: E402
from fill_skeleton import fill  # noqa: E402

COURSE = "layernorm"  # the course with every piece
HALF = 6  # the half-filled skeleton has the first six pieces written: the norms, RoPE, attention, SwiGLU


def test_the_pieces_are_every_region_of_the_course_files():
    course_regions = {r.id for r in ms.all_regions() if not r.path.startswith(SOLUTION_ONLY)}
    assert [p.region for p in PIECES if p.region not in course_regions] == []
    assert sorted(course_regions - {p.region for p in PIECES}) == []


def test_every_piece_has_student_checks():
    names = [node.name for path in (REPO_ROOT / "tests" / "student").glob("test_*.py")
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)
             and node.name.startswith("test_")]
    assert [p.region for p in PIECES if not any(p.checks in name for name in names)] == []


def test_the_solution_has_no_todo():
    assert [p.region for p in PIECES if is_todo(REPO_ROOT, p)] == []


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """Three skeletons of the course: unfilled, half filled with RMSNorm written wrong, filled."""
    mirror = next((d for d in asset_dirs() if (d / "reference" / "rotary_embedding_actual.data").is_file()), None)
    if mirror is None:
        skip_or_fail("the asset mirror (MINLLAMA_ASSETS) is not found")
    folder = tmp_path_factory.mktemp("progress")
    ms.build(folder / "unfilled", COURSE, assets=mirror / "reference")
    ms.build(folder / "half", COURSE, blank={p.region for p in PIECES[HALF:]}, assets=mirror / "reference")
    llama = folder / "half" / "llama.py"
    right = "return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)"
    assert llama.read_text().count(right) == 1
    llama.write_text(llama.read_text().replace(right, right.replace("mean", "sum")))
    shutil.copytree(folder / "unfilled", folder / "filled")
    fill(folder / "filled")
    return folder


def progress(tree) -> list[str]:
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH" and not k.startswith("MINLLAMA_")}
    result = subprocess.run([sys.executable, "-m", "minllama.tools.progress"], cwd=tree, env=env,
                            capture_output=True, text=True, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("your progress (python -m minllama.tools.progress):")
    assert lines[-1].startswith("next: "), result.stdout[-3000:]  # the summary ends the output
    return lines[start + 1:]


def state_of(lines: list[str], name: str) -> str:
    line = next(line for line in lines if f" {name}" in line)
    return line.split()[0] if not line.strip().startswith(("cannot", "not ")) else " ".join(line.split()[:2])


@pytest.mark.slow
def test_unfilled_skeleton_every_piece_todo(trees):
    lines = progress(trees / "unfilled")
    assert [state_of(lines, p.region) for p in PIECES] == ["todo"] * len(PIECES)
    assert state_of(lines, "rope_test.py") == "failing" and "NotImplementedError" in lines[len(PIECES) + 1]
    assert state_of(lines, "sanity_check.py") == "cannot run"
    assert lines[-1] == 'next: write RMSNorm._norm in llama.py, then python -m pytest -q tests/student -k "rmsnorm"'


@pytest.mark.slow
def test_half_filled_skeleton_shows_each_state_and_the_first_failure(trees):
    lines = progress(trees / "half")
    rmsnorm = next(line for line in lines if "RMSNorm._norm" in line)
    assert rmsnorm.split()[0] == "failing" and "test_rmsnorm_matches_pytorch: " in rmsnorm
    assert [state_of(lines, p.region) for p in PIECES[1:HALF]] == ["passing"] * (HALF - 1)
    assert [state_of(lines, p.region) for p in PIECES[HALF:]] == ["todo"] * (len(PIECES) - HALF)
    assert state_of(lines, "rope_test.py") == "passing" and state_of(lines, "optimizer_test.py") == "failing"
    assert lines[-1] == 'next: python -m pytest -q tests/student -k "rmsnorm"'


@pytest.mark.slow
def test_filled_skeleton_every_piece_passing_and_pytest_ends_with_the_summary(trees):
    lines = progress(trees / "filled")
    assert [state_of(lines, p.region) for p in PIECES] == ["passing"] * len(PIECES)
    assert state_of(lines, "rope_test.py") == state_of(lines, "optimizer_test.py") == "passing"
    assert lines[-1] == "next: bash setup.sh, then python sanity_check.py"
    # A selection (-k) runs no grader check and says so; the pieces it did not check say that too.
    selected = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/student",
                               "-k", "rope"], cwd=trees / "filled", capture_output=True, text=True, timeout=600)
    tail = selected.stdout.splitlines()
    assert tail[-1] == 'next: python -m pytest -q tests/student -k "rmsnorm"', selected.stdout[-2000:]
    assert state_of(tail, "rope.py:apply_rotary_emb") == "passing"
    assert state_of(tail, "llama.py:RMSNorm._norm") == "not checked"
    assert state_of(tail, "rope_test.py") == "not run"
