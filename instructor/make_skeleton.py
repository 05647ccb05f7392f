"""Write the student repository from the reference solution: `python instructor/make_skeleton.py OUT_DIR`.

The solution on `main` is the one source of truth. Every piece students implement sits inside a
function body between `# BEGIN SOLUTION` and `# END SOLUTION`; in the skeleton it becomes `# todo`
and `raise NotImplementedError`, so the signature and the docstring that teaches the piece stay
(regions.py: the regions, and the `# BEGIN VARIANT` fences for lines only one course sees). A
region is named by its file and the function around it, e.g. `llama.py:RMSNorm._norm`.

A course *variant* is more than a set of regions. Its facts are its entry in course.py (the one
table every tool reads): rmsnorm, the LUH course (RMSNorm, plain temperature sampling, AdamW
without clipping, no LoRA), and layernorm, the 2025 CMU course (LayerNorm, epsilon sampling,
clipping, LoRA). From them this tool derives what the skeleton ships (course_rewrites): the
course's name in course.py, its grader reference files under the upstream names
(`optimizer_test.npy`, `sanity_check.data`), listed alone in its setup.sh asset table and
assets.sha256 (so that setup.sh lays out and verifies the course's own files), its `--option`
values, its method modules (no lora.py for LUH), and a few constants, defaults, parameters and
statements so its code matches the course. The rewrites (rewrites.py) are made on the syntax
tree's positions, never by searching raw text; they see the whole solution, before the regions are
blanked. A rewrite whose target is missing is an error: when a source file changes shape, this
tool says so instead of shipping a half-rewritten file.

Only files git tracks ship (so make the skeleton from a git checkout): never untracked files of
the instructor's checkout. The Python files that ship are the import closure of the course's entry
points (shipping.py): what the course's commands and checks reach, and nothing else; support/ moves
to minllama/support/ on the way. Beside them: the root's documents and set-up files and
`tests/student/`, the checks students run themselves (never the instructor tools, the benchmarks or
the pytest suite, which tests internals against the solution). structure.md is the solution's,
without what the course does not ship (skeleton_docs.py); the README is written for the course, and
so is the GitHub Classroom workflow (classroom.py: one graded step per grader check).
Every Python file written is parsed and compiled before the tool reports success.
instructor/fill_skeleton.py puts the solution back into a skeleton's todos, to check the skeleton.
"""

import argparse
import ast
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # course.py, the table of the course variants
from classroom import WORKFLOW, workflow  # noqa: E402
from regions import (BEGIN, END, Region, SkeletonError, fill_regions, find_regions, marker_lines,  # noqa: E402
                     select_variant_lines)
from rewrites import (drop_docstring_paragraphs, drop_keyword, drop_parameter, drop_statements,  # noqa: E402
                      keep_cli_choices, rename_checksums, rename_setup_assets, set_assignment, set_parameter_default)
from shipping import STUDENT_TESTS, ShippingError, closure, follow_the_move, shipped_path  # noqa: E402
from skeleton_docs import skeleton_structure, student_readme  # noqa: E402
from support.course import COURSES, Course  # noqa: E402

STRUCTURE = "structure.md"  # the students' guide to the files: only what their course ships


# ----------------------------------------------------------------------------- the variants

@dataclass(frozen=True)
class Variant:
    """A course (course.py) and the rewrites that make the solution's files that course's."""
    course: Course
    rewrites: dict = field(default_factory=dict)  # file -> rewrites applied in order

    @property
    def name(self) -> str:
        return self.course.name

    @property
    def solved(self) -> frozenset:  # region ids that stay solved: not this course's exercise
        return self.course.solved

    @property
    def references(self) -> dict:  # shipped (upstream) name -> explicit name in assets/reference
        return dict(self.course.references)


# The grader reference files as the solution keeps them, under explicit names: in setup.sh's asset
# table, in assets.sha256 and in ../shared/assets/reference.
REFERENCE_FILES = frozenset(explicit for c in COURSES.values() for _, explicit in c.references)


def _adamw_without_clipping() -> list:
    """An AdamW without gradient clipping: no `max_grad_norm` parameter, default, check or code,
    and no docstring paragraph about it."""
    name = "max_grad_norm"
    return [drop_docstring_paragraphs("", name), drop_docstring_paragraphs("AdamW", name),
            drop_docstring_paragraphs("AdamW.step", name), drop_parameter("AdamW.__init__", name),
            drop_keyword("AdamW.__init__", "dict", name), drop_statements("_check_hyperparameters", name),
            drop_statements("AdamW.step", name)]


def course_rewrites(course: Course) -> dict:
    """What turns the solution into `course`'s files, all derived from its entry in course.py:
    course.py names the course (every tool reads it from there); setup.sh and assets.sha256 list
    exactly its reference files, under the upstream names it ships them as, so that setup.sh lays
    out (and checks) the course's own files, never the other's; `--option` offers its options;
    the model's norm and generate's epsilon default to the course's; AdamW loses clipping when the
    course has none."""
    renames = {explicit: shipped for shipped, explicit in course.references}
    others = set(REFERENCE_FILES - set(renames))
    rewrites = {
        "support/course.py": [set_assignment("THIS_COURSE", course.name)],
        "setup.sh": [rename_setup_assets(renames, others)],
        "assets.sha256": [rename_checksums(renames, others)],
        "run_llama.py": [keep_cli_choices("--option", course.options)],
        "config.py": [set_assignment("LlamaConfig.norm_type", course.norm)],
        "llama.py": [set_parameter_default("Llama.generate", "epsilon", course.epsilon),
                     set_parameter_default("sample_next_token", "epsilon", course.epsilon)],
    }
    if course.max_grad_norm is None:
        rewrites["optimizer.py"] = _adamw_without_clipping()
    return rewrites


VARIANTS = {name: Variant(course, course_rewrites(course)) for name, course in COURSES.items()}


# ----------------------------------------------------------------------------- the repository

def find_assets() -> Path | None:
    """The folder holding the grader reference files: the repository root (after setup.sh),
    then $MINLLAMA_ASSETS/reference, then ../shared/assets/reference. None if none has them."""
    candidates = [REPO_ROOT]
    if os.environ.get("MINLLAMA_ASSETS"):
        candidates.append(Path(os.environ["MINLLAMA_ASSETS"]) / "reference")
    candidates.append(REPO_ROOT.parent / "shared" / "assets" / "reference")
    for folder in candidates:
        if (folder / "rotary_embedding_actual.data").is_file():
            return folder
    return None


def source_files(root: Path = REPO_ROOT) -> list[str]:
    """The files of the solution that could ship: those git tracks (committed or staged), still
    present on disk. Untracked files (a scratch data file, a notebook) never ship, nor do
    setup.sh's assets, outputs and caches, which git ignores."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "-z"], cwd=root, check=True,
                                capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise SkeletonError("git is not installed: the skeleton is made of the files git tracks "
                            f"in {root}, so this tool needs git") from None
    except subprocess.CalledProcessError as err:
        raise SkeletonError(f"{root} is not a git checkout ({err.stderr.strip() or 'git ls-files failed'}): the "
                            "skeleton ships only the files git tracks, so make it from a clone of the solution "
                            "(git clone), not from a copy") from None
    return sorted(path for path in set(listed.split("\0")) if path and (root / path).is_file())


def shipped_files(tracked: list[str], variant: Variant, root: Path = REPO_ROOT) -> list[str]:
    """The solution files the variant's skeleton ships (as the solution names them): the import
    closure of the course's entry points (shipping.py), and the documents and set-up files at the
    root and in tests/student/. The students get their own README."""
    python = closure(variant.course, lambda path: (root / path).read_text(), set(tracked))
    documents = [path for path in tracked if not path.endswith(".py") and path not in ("README.md", ".importlinter")
                 and (path.startswith(STUDENT_TESTS) or "/" not in path)]
    return sorted({*python, *documents})


def all_regions(root: Path = REPO_ROOT) -> list[Region]:
    """Every solution region of the repository, whatever the variant."""
    return [region for path in source_files(root) if path.endswith(".py")
            for region in find_regions((root / path).read_text(), path)]


def variant_source(source: str, path: str, variant: Variant) -> str:
    """One solution file as the variant has it, regions still marked: for a Python file the
    variant's lines selected, then (any file) its rewrites made, on the whole solution, so that a
    rewrite always finds its target."""
    if path.endswith(".py"):
        source = select_variant_lines(source, path, variant.name)
    for rewrite in variant.rewrites.get(path, []):
        try:
            source = rewrite(source)
        except LookupError as err:
            raise SkeletonError(f"{path}: cannot apply the {variant.name} rewrite "
                                f"'{rewrite.description}': {err}") from None
    return source


def skeleton_source(source: str, path: str, variant: Variant, blank: set[str]) -> str:
    """One file of the skeleton: the variant's (variant_source), with the regions in `blank`
    emptied in a Python file."""
    source = variant_source(source, path, variant)
    return fill_regions(source, find_regions(source, path), blank) if path.endswith(".py") else source


def build(out_dir: Path, variant_name: str = "layernorm", blank: set[str] | None = None,
          root: Path = REPO_ROOT, assets: Path | None = None) -> list[Region]:
    """Write the skeleton of `variant_name` into `out_dir` (which must not exist or be empty).

    `blank` overrides which regions become todos (default: all but the variant's solved ones);
    the coverage test uses it to empty one region at a time. Returns the regions left blank."""
    variant = VARIANTS[variant_name]
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SkeletonError(f"{out_dir} exists and is not empty")
    assets = assets or find_assets()
    if assets is None:
        raise SkeletonError("grader reference files not found: run `bash setup.sh`, set MINLLAMA_ASSETS, "
                            "or pass --assets DIR")

    tracked = source_files(root)
    try:
        files = shipped_files(tracked, variant, root)
    except ShippingError as error:
        raise SkeletonError(str(error)) from None
    missing_targets = set(variant.rewrites) - set(files)
    if missing_targets:
        raise SkeletonError(f"the {variant.name} rewrites need files that are not there: {sorted(missing_targets)}")
    regions = [r for path in files if path.endswith(".py") for r in find_regions((root / path).read_text(), path)]
    if blank is None:
        blank = {r.id for r in regions} - variant.solved
    unknown = blank - {r.id for r in regions}
    if unknown:
        raise SkeletonError(f"no such region(s) in the {variant.name} skeleton: {sorted(unknown)}")

    blanked = [r for r in regions if r.id in blank]
    not_shipped = sorted(set(tracked) - set(files))
    for path in files:
        target = out_dir / shipped_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path == STRUCTURE:
            absent = [region for dropped in not_shipped if dropped.endswith(".py")
                      for region in find_regions((root / dropped).read_text(), dropped)]
            target.write_text(follow_the_move(skeleton_structure((root / path).read_text(), variant.course, files,
                                                                 not_shipped, blanked, absent)))
            continue
        if not path.endswith(".py"):
            if path in variant.rewrites:
                target.write_text(skeleton_source((root / path).read_text(), path, variant, blank))
                shutil.copymode(root / path, target)
            else:
                shutil.copy2(root / path, target)
            continue
        text = skeleton_source((root / path).read_text(), path, variant, blank)
        tree = ast.parse(text, filename=path)  # the skeleton must be valid Python...
        compile(tree, path, "exec")  # ...that compiles
        if any(marker in (BEGIN, END) for _, marker, _ in marker_lines(text, path)):
            raise SkeletonError(f"{path}: solution markers left in the skeleton")
        target.write_text(follow_the_move(text))
        shutil.copymode(root / path, target)

    for shipped, original in variant.references.items():
        shutil.copy2(assets / original, out_dir / shipped)
    (out_dir / "README.md").write_text(student_readme(variant.course, blanked))
    (out_dir / WORKFLOW).parent.mkdir(parents=True, exist_ok=True)
    (out_dir / WORKFLOW).write_text(workflow(variant.course))  # GitHub Classroom's autograding
    return blanked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="where to write the student repository (must not exist or be empty)")
    parser.add_argument("--variant", choices=list(VARIANTS), default="layernorm",
                        help="the course flavour (default: layernorm)")
    parser.add_argument("--assets", type=Path, default=None,
                        help="folder with the grader reference files (default: repository root, "
                             "$MINLLAMA_ASSETS/reference, ../shared/assets/reference)")
    parser.add_argument("--list-regions", action="store_true", help="print the solution regions and exit")
    args = parser.parse_args()
    try:
        if args.list_regions:
            for region in all_regions():
                print(f"{region.id}  (lines {region.begin}-{region.end})")
            return 0
        blanked = build(args.out_dir, args.variant, assets=args.assets)
    except SkeletonError as err:
        print(f"make_skeleton: {err}", file=sys.stderr)
        return 1
    print(f"wrote the {args.variant} skeleton to {args.out_dir}: {len(blanked)} pieces to implement")
    for region in blanked:
        print(f"  {region.id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
