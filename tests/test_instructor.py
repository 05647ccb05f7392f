"""The instructor tools: solution regions, the student skeleton of both course variants, the
coverage guarantee (every region is caught by a student check), the reference files, and
prepare_submit.py.

The coverage test builds, for every region, a copy of the repository in which only that region
is a todo, and runs the student checks (tests/student) there in a child process: they must fail
with NotImplementedError. With no region blank they must pass. The copies run in parallel."""

import ast
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from config import LlamaConfig
from llama import Llama
from utils import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "instructor"))
import make_reference  # noqa: E402
import make_skeleton as ms  # noqa: E402

import prepare_submit  # noqa: E402

# DESIGN.md, "Student-facing names": every one of them must be a region.
STUDENT_FACING = {
    "llama.py:RMSNorm._norm", "llama.py:LayerNorm._norm", "llama.py:Attention.compute_query_key_value_scores",
    "llama.py:Attention.forward", "llama.py:FeedForward.SwiGLU", "llama.py:LlamaLayer.forward",
    "llama.py:Llama.forward", "llama.py:Llama.generate", "rope.py:apply_rotary_emb", "optimizer.py:AdamW.step",
    "classifier.py:LlamaEmbeddingClassifier.forward", "lora.py:LoRALayer.forward",
}


def assets() -> Path:
    found = ms.find_assets()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("grader reference files not found (repository root, $MINLLAMA_ASSETS, ../shared/assets)")
        pytest.skip("grader reference files not found")
    return found


def run_student_checks(tree: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/student", *extra],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=600)


# ----------------------------------------------------------------------------- regions and rewrites

def test_every_student_facing_piece_is_a_region():
    ids = {region.id for region in ms.all_regions()}
    assert STUDENT_FACING <= ids, f"not marked as solution regions: {sorted(STUDENT_FACING - ids)}"


SOURCE = '''\
def f(x):
    """Doc."""
    # BEGIN SOLUTION
    y = x + 1
    return y
    # END SOLUTION


class A:
    def g(self):
        s = "# BEGIN SOLUTION"  # a marker in a string is not a marker
        # BEGIN SOLUTION
        return 2
        # END SOLUTION
'''


def test_regions_become_todos_that_still_parse():
    regions = ms.find_regions(SOURCE, "m.py")
    assert [r.id for r in regions] == ["m.py:f", "m.py:A.g"]
    skeleton = ms.fill_regions(SOURCE, regions, {"m.py:f"})
    assert '    """Doc."""\n    # todo\n    raise NotImplementedError\n' in skeleton
    assert "        return 2\n" in skeleton and skeleton.count("# BEGIN SOLUTION") == 1  # the string
    namespace = {}
    exec(compile(skeleton, "m.py", "exec"), namespace)
    with pytest.raises(NotImplementedError):
        namespace["f"](1)
    assert namespace["A"]().g() == 2


@pytest.mark.parametrize("source, message", [
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    return 1\n    # END SOLUTION\n", "without a"),
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n  # END SOLUTION\n", "not indented"),
    ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", "inside a function"),
    ("def f():\n    return 1  # BEGIN SOLUTION\n", "alone on its line"),
])
def test_malformed_regions_are_errors(source, message):
    with pytest.raises(ms.SkeletonError, match=message):
        ms.find_regions(source, "m.py")


def test_variant_fences_keep_lines_only_in_their_variant():
    source = "a = 1\n# BEGIN VARIANT layernorm\nb = 2\n# END VARIANT\nc = 3\n"
    assert ms.select_variant_lines(source, "m.py", "layernorm") == "a = 1\nb = 2\nc = 3\n"
    assert ms.select_variant_lines(source, "m.py", "rmsnorm") == "a = 1\nc = 3\n"
    with pytest.raises(ms.SkeletonError, match="variant names"):
        ms.select_variant_lines("# BEGIN VARIANT nope\n# END VARIANT\n", "m.py", "rmsnorm")


def test_syntax_tree_rewrites():
    source = ('X = {"a": 1}  # keep me\n\nclass C:\n    n: str = "r"\n\n'
              'def g(a, b=0.05, *, c="x"):\n    p.add_argument("--o", choices=["p", "lora"], default="p")\n')
    out = ms.set_assignment("X", {"b": ("f", None)})(source)
    out = ms.set_assignment("C.n", "layernorm")(out)
    out = ms.set_parameter_default("g", "b", 0.0)(out)
    out = ms.remove_cli_choice("--o", "lora")(out)
    out = ms.set_cli_default("--o", "q")(out)
    assert 'X = {"b": ("f", None)}  # keep me' in out and 'n: str = "layernorm"' in out
    assert "def g(a, b=0.0, *, c=\"x\")" in out and 'choices=["p"], default="q"' in out
    with pytest.raises(LookupError):
        ms.set_assignment("Y", 1)(source)


# ----------------------------------------------------------------------------- the skeletons

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """A random checkpoint with the course vocabulary (the sanity batch uses ids up to 17953),
    and its sanity references for both norms."""
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, dim=16, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=64)
    checkpoint = folder / "tiny.pt"
    torch.save({"model_args": config.to_dict(), "model": Llama(config).state_dict()}, checkpoint)
    make_reference.write_references(folder, checkpoint, norms=["rmsnorm", "layernorm"])
    return checkpoint, folder


@pytest.mark.parametrize("variant", list(ms.VARIANTS))
def test_skeleton_builds_imports_and_fails_exactly_at_the_todos(variant, tmp_path, tiny_checkpoint):
    tree = tmp_path / "skeleton"
    blanked = ms.build(tree, variant, assets=assets())
    spec = ms.VARIANTS[variant]
    assert {r.id for r in blanked} == {r.id for r in ms.all_regions() if r.path not in spec.dropped} - spec.solved
    assert not (tree / "instructor").exists() and not (tree / "bench").exists()
    assert sorted(p.name for p in (tree / "tests").iterdir()) == ["student"]
    assert (tree / "lora.py").exists() == ("lora.py" not in spec.dropped)
    for shipped in spec.references:
        assert (tree / shipped).is_file()
    modules = sorted(p.stem for p in tree.glob("*.py"))
    for path in tree.rglob("*.py"):
        ast.parse(path.read_text())
        assert "BEGIN SOLUTION" not in path.read_text()
    imported = subprocess.run([sys.executable, "-c", f"import {', '.join(modules)}"], cwd=tree,
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr

    # The grader checks run and stop at the todos.
    checks = [["rope_test.py"], ["optimizer_test.py"],
              ["sanity_check.py", "--checkpoint", str(tiny_checkpoint[0])]]
    for check in checks:
        result = subprocess.run([sys.executable, *check], cwd=tree, capture_output=True, text=True)
        assert result.returncode != 0 and "NotImplementedError" in result.stderr, (check, result.stderr[-2000:])

    # Every student check that fails, fails with NotImplementedError.
    report = tmp_path / "junit.xml"
    result = run_student_checks(tree, f"--junitxml={report}")
    assert result.returncode == 1, result.stdout[-3000:]
    failures = [case.find("failure") for case in ElementTree.parse(report).iter("testcase")]
    failures = [f for f in failures if f is not None]
    assert failures and all("NotImplementedError" in (f.get("message", "") + (f.text or "")) for f in failures)


@pytest.mark.parametrize("variant", list(ms.VARIANTS))
def test_filled_skeleton_passes_every_check(variant, tmp_path, tiny_checkpoint):
    checkpoint, references = tiny_checkpoint
    tree = tmp_path / "solved"
    ms.build(tree, variant, blank=set(), assets=assets())
    result = run_student_checks(tree)
    assert result.returncode == 0, result.stdout[-3000:]
    norm = "rmsnorm" if variant == "rmsnorm" else "layernorm"
    checks = [["rope_test.py"], ["optimizer_test.py"],
              ["sanity_check.py", "--checkpoint", str(checkpoint), "--reference",
               str(references / f"sanity_check_{norm}.data")]]
    for check in checks:
        result = subprocess.run([sys.executable, *check], cwd=tree, capture_output=True, text=True)
        assert result.returncode == 0, (check, result.stderr[-2000:])


def test_every_region_is_covered_by_a_student_check(tmp_path):
    """For each variant and each region it blanks: only that region a todo -> the student checks fail
    with NotImplementedError. An uncovered region fails this test by name."""
    reference_files = assets()
    jobs = []
    for variant, spec in ms.VARIANTS.items():
        for region in ms.all_regions():
            if region.path in spec.dropped or region.id in spec.solved:
                continue
            tree = tmp_path / f"{variant}-{region.path}-{region.function}"
            ms.build(tree, variant, blank={region.id}, assets=reference_files)
            jobs.append((variant, region.id, tree))

    def run(job):
        variant, region_id, tree = job
        result = run_student_checks(tree, "-x")
        return variant, region_id, result.returncode != 0 and "NotImplementedError" in result.stdout

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        uncovered = [f"{variant}: {region_id}" for variant, region_id, caught in pool.map(run, jobs) if not caught]
    assert not uncovered, f"no student check fails when only these regions are missing: {uncovered}"


# ----------------------------------------------------------------------------- reference files

def test_make_reference_reproduces_the_upstream_rope_and_optimizer_files(tmp_path):
    upstream = assets()
    make_reference.write_references(tmp_path)
    for mine, theirs in zip(torch.load(tmp_path / "rotary_embedding_actual.data", weights_only=True),
                            torch.load(upstream / "rotary_embedding_actual.data", weights_only=True)):
        assert torch.equal(mine, theirs)
    # Without clipping we agree to float32 rounding; the clipped upstream file was made on another
    # machine and agrees to 1.5e-5, inside the grader's tolerance (see tests/test_optimizer.py).
    for name, atol, rtol in (("optimizer_test.npy", 1e-6, 0), ("optimizer_test_clip0.9.npy", 1e-5, 1e-3)):
        mine, theirs = np.load(tmp_path / name), np.load(upstream / name)
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------- prepare_submit.py

def _student_folder(root: Path, variant: str) -> Path:
    root.mkdir()
    for name in prepare_submit.REQUIRED_FILES[variant]:
        (root / name).write_text("x\n")
    (root / "stories42M.pt").write_bytes(b"0" * 100)  # never zipped
    (root / ".venv").mkdir()
    (root / ".venv" / "big.bin").write_bytes(b"0" * 100)
    return root


def _prepare(*args, cwd):
    return subprocess.run([sys.executable, str(REPO_ROOT / "prepare_submit.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("variant", list(prepare_submit.REQUIRED_FILES))
def test_prepare_submit_creates_and_checks_a_zip(tmp_path, variant):
    folder = _student_folder(tmp_path / "repo", variant)
    result = _prepare(folder, "abc1", "--variant", variant, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "abc1.zip") as archive:
        names = set(archive.namelist())
    assert names == {f"abc1/{name}" for name in prepare_submit.REQUIRED_FILES[variant]}
    assert _prepare(tmp_path / "abc1.zip", "abc1", "--variant", variant, cwd=tmp_path).returncode == 0
    wrong_id = _prepare(tmp_path / "abc1.zip", "xyz9", "--variant", variant, cwd=tmp_path)
    assert wrong_id.returncode == 1 and "'abc1'" in wrong_id.stderr


def test_prepare_submit_names_what_is_wrong(tmp_path):
    folder = _student_folder(tmp_path / "repo", "rmsnorm")
    (folder / "llama.py").unlink()
    result = _prepare(folder, "abc1", "--variant", "rmsnorm", cwd=tmp_path)
    assert result.returncode == 1 and "llama.py" in result.stderr

    two_folders = tmp_path / "two.zip"
    with zipfile.ZipFile(two_folders, "w") as archive:
        for name in prepare_submit.REQUIRED_FILES["rmsnorm"]:
            archive.writestr(f"abc1/{name}", "x")
        archive.writestr("other/notes.txt", "x")
    result = _prepare(two_folders, "abc1", "--variant", "rmsnorm", cwd=tmp_path)
    assert result.returncode == 1 and "one top-level folder" in result.stderr

    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as archive:
        for name in prepare_submit.REQUIRED_FILES["rmsnorm"]:
            archive.writestr(f"abc1/{name}", "x")
        archive.writestr("abc1/weights.npy", os.urandom(11 * 2**20))
    result = _prepare(big, "abc1", "--variant", "rmsnorm", cwd=tmp_path)
    assert result.returncode == 1 and "10 MB" in result.stderr
