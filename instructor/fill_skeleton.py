"""Put the solution back into a skeleton's todos: `python instructor/fill_skeleton.py SKELETON [--check]`.

A skeleton made by make_skeleton.py has, in every piece left to the students, the two lines
`# todo` and `raise NotImplementedError`. This tool replaces each such pair by the solution's code
for that piece (as the skeleton's course has it, course.py's THIS_COURSE), in place, so that an
instructor can check the skeleton itself: with `--check` it then runs the student checks and the
grader checks (rope_test.py, optimizer_test.py) in it, which must all pass. A todo the solution has
no region for is an error naming it; pieces already written are left alone.
"""

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

import make_skeleton as ms
from regions import SkeletonError, find_regions, qualified_functions
from shipping import shipped_path

TODO = ("# todo", "raise NotImplementedError")


def skeleton_course(skeleton: Path) -> str:
    """The course a skeleton was made for: the THIS_COURSE its course.py sets."""
    path = skeleton / shipped_path("support/course.py")
    if not path.is_file():
        raise SkeletonError(f"{skeleton} has no course.py: not a skeleton made by make_skeleton.py")
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(t, "id", None) == "THIS_COURSE" for t in targets):
                name = ast.literal_eval(node.value)
                if name not in ms.VARIANTS:
                    raise SkeletonError(f"{path}: THIS_COURSE is {name!r}, not a course of {sorted(ms.VARIANTS)}")
                return name
    raise SkeletonError(f"{path} does not set THIS_COURSE")


def solution_code(path: str, variant: ms.Variant, root: Path = ms.REPO_ROOT) -> dict[str, list[str]]:
    """{region id: its lines} of one solution file, as the variant's skeleton sees the file."""
    source = ms.variant_source((root / path).read_text(), path, variant)
    lines = source.splitlines(keepends=True)
    return {region.id: lines[region.begin: region.end - 1] for region in find_regions(source, path)}


def fill_file(text: str, path: str, code: dict[str, list[str]]) -> tuple[str, list[str]]:
    """The file with every todo pair replaced by its region's code; and the ids filled."""
    functions = qualified_functions(ast.parse(text, filename=path))
    lines = text.splitlines(keepends=True)
    filled = []
    for number in range(len(lines) - 2, -1, -1):  # from the end: replacing shifts only later lines
        if (lines[number].strip(), lines[number + 1].strip()) != TODO:
            continue
        line = number + 1  # 1-based, as ast counts
        inside = [(name, node) for name, node in functions if node.lineno < line <= node.end_lineno]
        if not inside:
            continue
        region = f"{path}:{max(inside, key=lambda item: item[1].lineno)[0]}"
        if region not in code:
            raise SkeletonError(f"{path}:{line}: a todo in {region}, for which the solution has no region")
        lines[number: number + 2] = code[region]
        filled.append(region)
    return "".join(lines), filled[::-1]


def fill(skeleton: Path, root: Path = ms.REPO_ROOT) -> list[str]:
    """Fill every todo of `skeleton` in place; the region ids filled, in file order."""
    variant = ms.VARIANTS[skeleton_course(skeleton)]
    filled = []
    for path in sorted(p.relative_to(skeleton).as_posix() for p in skeleton.rglob("*.py")):
        text = (skeleton / path).read_text()
        if "raise NotImplementedError" not in text or not (root / path).is_file():
            continue
        new_text, ids = fill_file(text, path, solution_code(path, variant, root))
        if ids:
            compile(new_text, path, "exec")
            temporary = skeleton / f"{path}.fill.tmp"
            temporary.write_text(new_text)
            os.replace(temporary, skeleton / path)
            filled += ids
    return filled


def check(skeleton: Path) -> int:
    """Run the student checks and the grader checks that need no checkpoint; the number that failed."""
    commands = [[sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/student"],
                [sys.executable, "rope_test.py"], [sys.executable, "optimizer_test.py"]]
    failed = 0
    for command in commands:
        print(f"$ {' '.join(command[1:])}", flush=True)
        failed += subprocess.run(command, cwd=skeleton).returncode != 0
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("skeleton", type=Path, help="a student repository written by make_skeleton.py")
    parser.add_argument("--check", action="store_true", help="then run the student and grader checks in it")
    args = parser.parse_args()
    try:
        filled = fill(args.skeleton)
    except (SkeletonError, SyntaxError) as err:
        print(f"fill_skeleton: {err}", file=sys.stderr)
        return 1
    print(f"filled {len(filled)} pieces of {args.skeleton} with the solution")
    for region in filled:
        print(f"  {region}")
    if args.check:
        failed = check(args.skeleton)
        print("fill_skeleton: every check passes" if not failed else f"fill_skeleton: {failed} check(s) failed")
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
