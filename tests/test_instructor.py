"""The instructor tools: solution regions, the student skeleton of both course variants, the
coverage guarantee (every region is caught by a student check), the reference files, and
prepare_submit.py.

For each variant one module fixture builds the skeleton (and runs its setup.sh against the asset
mirror), the skeleton with every region filled, and, for the coverage guarantee, one copy per region
in which only that region is a todo; then it runs all their checks in a single child process
(tests/tree_checks.py), which imports torch once instead of once per check. The tests read the
results: the skeleton imports and its checks fail with NotImplementedError, the filled one passes
them, and each single-region copy fails a student check with NotImplementedError."""

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from config import LlamaConfig
from llama import Llama
from utils import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "instructor"))
import make_reference  # noqa: E402

import fill_skeleton  # noqa: E402
import make_skeleton as ms  # noqa: E402
import prepare_submit  # noqa: E402
from regions import fill_regions, find_regions, select_variant_lines  # noqa: E402
from rewrites import (definition, drop_docstring_paragraphs, drop_keyword, drop_parameter,  # noqa: E402
                      drop_statements, keep_cli_choices, rename_checksums, rename_setup_assets, set_assignment,
                      set_parameter_default)
from student_mutations import MUTATIONS  # noqa: E402

# DESIGN.md, "Student-facing names": every one of them must be a region.
STUDENT_FACING = {
    "llama.py:RMSNorm._norm", "llama.py:LayerNorm._norm", "llama.py:Attention.compute_query_key_value_scores",
    "llama.py:Attention.forward", "llama.py:FeedForward.SwiGLU", "llama.py:LlamaLayer.forward",
    "llama.py:Llama.forward", "llama.py:Llama.generate", "rope.py:apply_rotary_emb", "optimizer.py:AdamW.step",
    "classifier.py:LlamaEmbeddingClassifier.forward", "lora.py:LoRALayer.forward",
}
STUDENT_CHECKS = ["-q", "-p", "no:cacheprovider", "tests/student"]  # pytest arguments, in a tree
MUTATED_COURSE = "layernorm"  # the course whose skeleton has every region: the mutations run on it


def missing(what: str):
    """Skip locally; fail under CI, where the assets are always there."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} not found (repository root, $MINLLAMA_ASSETS, ../shared/assets)")
    pytest.skip(f"{what} not found")


def assets() -> Path:
    return ms.find_assets() or missing("grader reference files")


def asset_mirror() -> Path:
    """The local mirror setup.sh copies from (MINLLAMA_ASSETS, else ../shared/assets)."""
    mirror = Path(os.environ.get("MINLLAMA_ASSETS") or REPO_ROOT.parent / "shared" / "assets")
    return mirror if (mirror / "reference").is_dir() else missing(f"an asset mirror at {mirror}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_trees(jobs: list[dict], folder: Path) -> list[dict]:
    """Run `jobs` (see tests/tree_checks.py) in one child process; their results, in order."""
    jobs_file, results_file = folder / "jobs.json", folder / "results.json"
    jobs_file.write_text(json.dumps(jobs))
    child = subprocess.run([sys.executable, str(Path(__file__).with_name("tree_checks.py")), str(jobs_file),
                            str(results_file)], capture_output=True, text=True, timeout=900)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(results_file.read_text())


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
    regions = find_regions(SOURCE, "m.py")
    assert [r.id for r in regions] == ["m.py:f", "m.py:A.g"]
    skeleton = fill_regions(SOURCE, regions, {"m.py:f"})
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
        find_regions(source, "m.py")


def test_variant_fences_keep_lines_only_in_their_variant():
    source = "a = 1\n# BEGIN VARIANT layernorm\nb = 2\n# END VARIANT\nc = 3\n"
    assert select_variant_lines(source, "m.py", "layernorm") == "a = 1\nb = 2\nc = 3\n"
    assert select_variant_lines(source, "m.py", "rmsnorm") == "a = 1\nc = 3\n"
    with pytest.raises(ms.SkeletonError, match="variant names"):
        select_variant_lines("# BEGIN VARIANT nope\n# END VARIANT\n", "m.py", "rmsnorm")


def test_syntax_tree_rewrites():
    source = ('X = {"a": 1}  # keep me\n\nclass C:\n    n: str = "r"\n\n'
              'def g(a, b=0.05, *, c="x"):\n    p.add_argument("--o", choices=["p", "lora"], default="p")\n')
    out = set_assignment("X", {"b": ("f", None)})(source)
    out = set_assignment("C.n", "layernorm")(out)
    out = set_parameter_default("g", "b", 0.0)(out)
    out = keep_cli_choices("--o", ("p",))(out)
    assert 'X = {"b": ("f", None)}  # keep me' in out and 'n: str = "layernorm"' in out
    assert "def g(a, b=0.0, *, c=\"x\")" in out and 'choices=["p"], default="p"' in out
    with pytest.raises(LookupError):
        set_assignment("Y", 1)(source)
    with pytest.raises(LookupError, match="no choice"):
        keep_cli_choices("--o", ("p", "ia3"))(source)
    computed = 'p.add_argument("--o", choices=course.options_here())\n'  # already the course's
    assert keep_cli_choices("--o", ("p",))(computed) == computed


OPTION_SOURCE = '''\
"""Summary.

Clipping: at most max_grad_norm.

The end."""


def check(group):
    if group["lr"] < 0:
        raise ValueError
    max_grad_norm = group["max_grad_norm"]
    if max_grad_norm is not None and max_grad_norm <= 0:
        raise ValueError


class Opt:
    def __init__(self, params, lr=1e-3,
                 max_grad_norm=None):
        self.defaults = dict(lr=lr, max_grad_norm=max_grad_norm)

    def step(self):
        """Step.

        With max_grad_norm, clip first."""
        for group in self.groups:
            # BEGIN SOLUTION
            prepare(group)

            # clip the gradients
            if group["max_grad_norm"] is not None:
                clip(group)

            update(group)
            # END SOLUTION
'''


def test_rewrites_that_drop_an_option_everywhere():
    """The rewrites that take max_grad_norm out of the LUH course's optimizer, on a small source."""
    name, out = "max_grad_norm", OPTION_SOURCE
    for rewrite in (drop_docstring_paragraphs("", name), drop_docstring_paragraphs("Opt.step", name),
                    drop_parameter("Opt.__init__", name), drop_keyword("Opt.__init__", "dict", name),
                    drop_statements("check", name), drop_statements("Opt.step", name)):
        out = rewrite(out)
    assert out == ('"""Summary.\n\nThe end."""\n\n\ndef check(group):\n    if group["lr"] < 0:\n        raise ValueError\n'
                   '\n\nclass Opt:\n    def __init__(self, params, lr=1e-3):\n        self.defaults = dict(lr=lr)\n\n'
                   '    def step(self):\n        """Step."""\n        for group in self.groups:\n'
                   '            # BEGIN SOLUTION\n            prepare(group)\n\n            update(group)\n'
                   '            # END SOLUTION\n')
    for missing_target in (drop_parameter("Opt.step", name), drop_keyword("check", "dict", name),
                           drop_statements("Opt.__init__", "nothing"), drop_docstring_paragraphs("check", name),
                           drop_docstring_paragraphs("", "Summary")):
        with pytest.raises(LookupError):
            missing_target(OPTION_SOURCE)


def test_asset_table_rewrites():
    setup = 'X=1\nASSETS="\ndata/a.txt|data/a.txt|required|$U/a\nref_a.npy|reference/ref_a.npy|required|$U/ref.npy\n' \
            'ref_b.npy|reference/ref_b.npy|required|$V/ref.npy\n"\n'
    out = rename_setup_assets({"ref_b.npy": "ref.npy"}, {"ref_a.npy"})(setup)
    assert out == 'X=1\nASSETS="\ndata/a.txt|data/a.txt|required|$U/a\nref.npy|reference/ref_b.npy|required|$V/ref.npy\n"\n'
    sums = "aa  data/a.txt\nbb  ref_a.npy\ncc  ref_b.npy\n"
    assert rename_checksums({"ref_b.npy": "ref.npy"}, {"ref_a.npy"})(sums) == "aa  data/a.txt\ncc  ref.npy\n"
    with pytest.raises(LookupError, match="one row"):
        rename_checksums({"ref_c.npy": "ref.npy"}, set())(sums)
    with pytest.raises(LookupError, match="ASSETS"):
        rename_setup_assets({}, set())("X=1\n")


def test_each_variant_ships_reference_files_the_solution_keeps():
    for spec in ms.VARIANTS.values():
        assert set(spec.references.values()) <= ms.REFERENCE_FILES
        assert {"optimizer_test.npy", "sanity_check.data", "rotary_embedding_actual.data"} == set(spec.references)
    assert ms.REFERENCE_FILES == {path.name for path in (asset_mirror() / "reference").iterdir()}


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


@dataclass
class Course:
    """One variant's trees and what their checks gave (results as tests/tree_checks.py writes them)."""
    variant: str
    spec: ms.Variant
    mirror: Path
    skeleton: Path
    blanked: list  # the regions the skeleton leaves to students
    setup: subprocess.CompletedProcess  # the skeleton's `setup.sh --assets-only` against the mirror
    skeleton_checks: dict
    solved_checks: dict
    coverage: dict  # region id -> the student checks with only that region a todo
    mutants: dict  # index in MUTATIONS -> the student checks it should fail (MUTATED_COURSE only)


@pytest.fixture(scope="module", params=list(ms.VARIANTS))
def course(request, tmp_path_factory, tiny_checkpoint) -> Course:
    variant, spec = request.param, ms.VARIANTS[request.param]
    folder = tmp_path_factory.mktemp(variant)
    reference_files, mirror = assets(), asset_mirror()
    checkpoint, references = tiny_checkpoint

    skeleton = folder / "skeleton"
    blanked = ms.build(skeleton, variant, assets=reference_files)
    # A student runs setup.sh in the skeleton: it must keep the reference files shipped with it, and
    # lay out the course's own from the mirror where one is missing (optimizer_test.npy, whose
    # contents differ between the courses).
    (skeleton / "optimizer_test.npy").unlink()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MINLLAMA_")}, "MINLLAMA_ASSETS": str(mirror)}
    setup = subprocess.run(["bash", "setup.sh", "--assets-only"], cwd=skeleton, env=env,
                           capture_output=True, text=True, timeout=300)

    solved = folder / "solved"
    ms.build(solved, variant, blank=set(), assets=reference_files)
    single = {}
    for number, region in enumerate(blanked):
        single[region.id] = folder / f"region{number}"
        ms.build(single[region.id], variant, blank={region.id}, assets=reference_files)

    mutants = {}
    for number, mutation in enumerate(MUTATIONS if variant == MUTATED_COURSE else []):
        mutants[number] = folder / f"mutant{number}"
        shutil.copytree(solved, mutants[number])
        mutate(mutants[number], mutation)

    norm = spec.course.norm
    sanity = ["sanity_check.py", "--checkpoint", str(checkpoint)]
    jobs = [{"tree": str(skeleton), "imports": True,
             "scripts": [["rope_test.py"], ["optimizer_test.py"], sanity, ["run_llama.py", "-h"]],
             "pytest": STUDENT_CHECKS},
            {"tree": str(solved), "scripts": [["rope_test.py"], ["optimizer_test.py"],
                                              sanity + ["--reference", str(references / f"sanity_check_{norm}.data")]],
             "pytest": STUDENT_CHECKS}]
    jobs += [{"tree": str(tree), "pytest": STUDENT_CHECKS + ["-x", *checks_of(region)]} for region, tree in single.items()]
    jobs += [{"tree": str(tree), "pytest": STUDENT_CHECKS + ["-k", MUTATIONS[number].caught_by]}
             for number, tree in mutants.items()]
    skeleton_checks, solved_checks, *rest = check_trees(jobs, folder)
    return Course(variant, spec, mirror, skeleton, blanked, setup, skeleton_checks, solved_checks,
                  dict(zip(single, rest[:len(single)])), dict(zip(mutants, rest[len(single):])))


def checks_of(region: str) -> list[str]:
    """pytest arguments selecting the student checks that tests/student_mutations.py names for a
    region (all of them for a region it does not know), so that a todo there is looked for only
    where it would show."""
    names = [f"({m.caught_by})" for m in MUTATIONS if f"{m.path}:{m.region}" == region]
    return ["-k", " or ".join(names)] if names else []


def mutate(tree: Path, mutation) -> None:
    """Break one behaviour in a copy of the solution: each replacement must match exactly once."""
    path = tree / mutation.path
    text = path.read_text()
    for old, new in mutation.replacements:
        assert text.count(old) == 1, (f"mutation '{mutation.behaviour}' of {mutation.region}: {old!r} occurs "
                                      f"{text.count(old)} times in {mutation.path}; update tests/student_mutations.py")
        text = text.replace(old, new)
    path.write_text(text)


def test_skeleton_builds_imports_and_fails_exactly_at_the_todos(course):
    spec, tree = course.spec, course.skeleton
    assert {r.id for r in course.blanked} == {r.id for r in ms.all_regions() if (tree / r.path).exists()} - spec.solved
    assert not (tree / "instructor").exists() and not (tree / "bench").exists()
    assert sorted(p.name for p in (tree / "tests").iterdir()) == ["student"]
    assert (tree / "lora.py").exists() == ("lora" in spec.course.options)
    assert sorted(p.name for p in tree.iterdir() if p.is_dir()) == [".github", "data", "minllama", "tests"]
    for shipped in spec.references:
        assert (tree / shipped).is_file()
    for path in tree.rglob("*.py"):
        ast.parse(path.read_text())
        assert "BEGIN SOLUTION" not in path.read_text()
    assert not course.skeleton_checks["import_errors"], course.skeleton_checks["import_errors"]

    # The grader checks run and stop at the todos.
    for script in course.skeleton_checks["scripts"][:3]:
        assert script["exit"] != 0 and "NotImplementedError" in script["output"], script
    # Every student check that fails, fails with NotImplementedError.
    student = course.skeleton_checks["pytest"]
    assert student["exit"] == 1, student["output"]
    assert student["failures"] and all("NotImplementedError" in f["text"] for f in student["failures"]), \
        [f["test"] for f in student["failures"] if "NotImplementedError" not in f["text"]]


def test_skeleton_setup_lays_out_the_course_references(course):
    """The skeleton's setup.sh and assets.sha256 name the course's own reference files under the
    upstream names: it keeps the shipped ones, lays out the missing one, and the checks then reach
    the todos (not a missing or wrong file)."""
    assert course.setup.returncode == 0, course.setup.stderr
    assert "replacing" not in course.setup.stdout and "optimizer_test.npy: ready" in course.setup.stdout
    for shipped, original in course.spec.references.items():
        assert sha256(course.skeleton / shipped) == sha256(course.mirror / "reference" / original), shipped
    other_courses = ms.REFERENCE_FILES - set(course.spec.references)
    assert not [name for name in other_courses if (course.skeleton / name).exists()]
    for line in (course.skeleton / "assets.sha256").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        assert sha256(course.skeleton / path) == digest, path
    for script in course.skeleton_checks["scripts"][:2]:  # rope_test.py, optimizer_test.py
        assert "NotImplementedError" in script["output"] and "not found" not in script["output"], script


def test_each_course_has_its_interfaces(course):
    """LUH: AdamW without max_grad_norm, generate(idx, max_new_tokens, temperature=1.0) sampling
    plainly by default, no --option lora. CMU: clipping and epsilon sampling (0.05)."""
    luh = course.variant == "rmsnorm"
    optimizer = (course.skeleton / "optimizer.py").read_text()
    init = definition(ast.parse(optimizer), "AdamW.__init__")
    assert ("max_grad_norm" in [a.arg for a in init.args.args]) != luh
    assert ("max_grad_norm" in optimizer) != luh and ("clip" in optimizer.lower()) != luh
    generate = definition(ast.parse((course.skeleton / "llama.py").read_text()), "Llama.generate").args
    assert [a.arg for a in generate.args[:4]] == ["self", "idx", "max_new_tokens", "temperature"]
    defaults = dict(zip([a.arg for a in generate.args[-len(generate.defaults):]],
                        [ast.literal_eval(d) for d in generate.defaults]))
    assert defaults["temperature"] == 1.0 and defaults["epsilon"] == (0.0 if luh else 0.05)
    help_text = course.skeleton_checks["scripts"][3]  # run_llama.py -h
    assert help_text["exit"] == 0, help_text
    offered = help_text["output"].split("--option {", 1)[1].split("}", 1)[0].split(",")
    assert offered == list(course.spec.course.options)
    assert ("lora" in offered) != luh


def test_skeleton_structure_shows_only_what_the_course_ships(course):
    """structure.md lists no folder or file the skeleton lacks, and the pieces to implement are
    exactly the skeleton's todos; the LUH one says nothing of LoRA's file, option or layer."""
    text = (course.skeleton / "structure.md").read_text()
    for absent in ("`tests/`", "`bench/`", "`instructor/`"):
        assert absent not in text
    assert "`tests/student/`" in text
    luh = course.variant == "rmsnorm"
    for lora in ("lora.py", "--option lora", "LoRALayer"):
        assert (lora in text) != luh, lora
    assert ("`LayerNorm._norm`" in text.split("## In what order")[0]) != luh  # the LUH course's is solved
    assert "| `tokenizer.py` |" in text and "| `config.py` |" in text


def test_fill_skeleton_puts_back_exactly_the_solution(course, tmp_path):
    """fill_skeleton.py on the skeleton gives, file for file, the skeleton built with no todo."""
    filled, solved = tmp_path / "filled", course.skeleton.parent / "solved"
    shutil.copytree(course.skeleton, filled)
    ids = fill_skeleton.fill(filled)
    assert sorted(ids) == sorted(r.id for r in course.blanked)
    for path in solved.rglob("*.py"):
        assert (filled / path.relative_to(solved)).read_text() == path.read_text(), path
    assert fill_skeleton.fill(filled) == []  # nothing left to fill


def test_fill_skeleton_names_a_todo_without_a_solution(tmp_path):
    (tmp_path / "minllama" / "support").mkdir(parents=True)
    (tmp_path / "minllama" / "support" / "course.py").write_text('THIS_COURSE = "rmsnorm"\n')
    (tmp_path / "llama.py").write_text("def invented():\n    # todo\n    raise NotImplementedError\n")
    with pytest.raises(ms.SkeletonError, match="llama.py:invented"):
        fill_skeleton.fill(tmp_path)
    with pytest.raises(ms.SkeletonError, match="no course.py"):
        fill_skeleton.fill(tmp_path / "llama.py")


def test_filled_skeleton_passes_every_check(course):
    for script in course.solved_checks["scripts"]:
        assert script["exit"] == 0, script
    assert course.solved_checks["pytest"]["exit"] == 0, course.solved_checks["pytest"]["output"]


def test_every_region_is_covered_by_a_student_check(course):
    """Only one region a todo -> the student checks named for it in tests/student_mutations.py (all
    of them for a region it does not name) fail, first with NotImplementedError. An uncovered
    region fails this test by name."""
    def caught(result: dict) -> bool:
        failures = result["pytest"]["failures"]
        return bool(failures) and "NotImplementedError" in failures[0]["text"]

    uncovered = [region for region, result in course.coverage.items() if not caught(result)]
    assert not uncovered, f"no student check fails when only these regions are missing: {uncovered}"


def test_every_behaviour_the_pipelines_need_is_caught_by_a_student_check(course):
    """Each entry of tests/student_mutations.py breaks one behaviour in a copy of the solution: the
    student checks it names must then fail. A behaviour no check notices fails this test by name."""
    if course.variant != MUTATED_COURSE:
        pytest.skip(f"the mutations run on the {MUTATED_COURSE} skeleton, which has every region")
    assert {f"{m.path}:{m.region}" for m in MUTATIONS} == {r.id for r in course.blanked}  # every region
    survivors = [f"{MUTATIONS[n].region}: {MUTATIONS[n].behaviour} (-k {MUTATIONS[n].caught_by!r})"
                 for n, result in course.mutants.items()
                 if result["pytest"]["exit"] != 1 or not result["pytest"]["failures"]]
    assert not survivors, f"no student check notices these broken behaviours: {survivors}"


# ----------------------------------------------------------------------------- the repository

def _git_repository(folder: Path) -> Path:
    folder.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    (folder / "tracked.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "tracked.py"], cwd=folder, check=True)
    (folder / "scratch.txt").write_text("an instructor's note\n")  # untracked, not ignored
    return folder


def test_skeleton_ships_only_tracked_files(tmp_path):
    assert ms.source_files(_git_repository(tmp_path / "repo")) == ["tracked.py"]


def test_make_skeleton_outside_a_git_checkout_says_so(tmp_path):
    copy = tmp_path / "copy"
    (copy / "instructor").mkdir(parents=True)
    (copy / "support").mkdir()
    for name in ("instructor/make_skeleton.py", "instructor/regions.py", "instructor/rewrites.py",
                 "instructor/skeleton_docs.py", "instructor/shipping.py", "instructor/classroom.py",
                 "support/__init__.py", "support/course.py"):
        shutil.copy(REPO_ROOT / name, copy / name)
    result = subprocess.run([sys.executable, str(copy / "instructor" / "make_skeleton.py"), str(tmp_path / "out"),
                             "--assets", str(assets())], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "not a git checkout" in result.stderr and "git clone" in result.stderr


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
    assert result.returncode == 1 and "10 MB" in result.stderr and "abc1/weights.npy (11.0 MB)" in result.stderr


def test_prepare_submit_skips_temporary_files_and_leaves_no_zip_behind(tmp_path):
    folder = _student_folder(tmp_path / "repo", "rmsnorm")
    (folder / ".finetune-2-2e-05.pt.4242.tmp").write_bytes(os.urandom(11 * 2**20))  # an interrupted save
    result = _prepare(folder, "abc1", "--variant", "rmsnorm", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "abc1.zip") as archive:
        assert not [name for name in archive.namelist() if name.endswith(".tmp")]

    (tmp_path / "abc1.zip").unlink()
    (folder / "scores.npy").write_bytes(os.urandom(11 * 2**20))  # too big, and not skipped
    result = _prepare(folder, "abc1", "--variant", "rmsnorm", cwd=tmp_path)
    assert result.returncode == 1 and "abc1/scores.npy (11.0 MB)" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no zip, no temporary file
