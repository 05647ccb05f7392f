"""What a course's skeleton ships: the import closure of its entry points, computed, never listed.

The entry points are the files a student runs (run_llama.py, the three grader checks,
prepare_submit.py, the progress summary minllama/tools/progress.py) and the modules of the
course's own rows of the option table (support/course.py OPTION_FAMILIES: run_llama.py reaches a
family's module only through its row, by name). From them
every import is followed, at module level and inside functions alike, to the files of the
repository it names; what nothing reaches does not ship. The student checks (tests/student) ship
too; their module-level imports must be in the closure, and a check of a module the course may
lack imports it inside the test, behind a skip.

A module of the A+ work (SOLUTION_ONLY in support/course.py, the A+ rows' modules) or another
course's student file reached from a course's entry points stops the build, with the chain of
imports that reaches it: the shipped code would crash on it in the students' hands.

In the skeleton the support package moves inside minllama/ (minllama/support/), so that the root
holds the assignment and one folder the student need not open; the imports that name it follow.
"""

import ast
import re

from support.course import OPTION_FAMILIES, SOLUTION_ONLY, Course, all_methods, course_families

ENTRY_POINTS = ("run_llama.py", "rope_test.py", "optimizer_test.py", "sanity_check.py", "prepare_submit.py",
                "minllama/tools/progress.py")
STUDENT_TESTS = "tests/student/"
MOVED_PACKAGE, MOVED_TO = "support", "minllama/support"


class ShippingError(ValueError):
    """The course's code reaches a module that must not ship; the message gives the chain."""


def module_file(module: str, files: set[str]) -> str | None:
    """The repository file of a dotted module name, or None for a module from outside (torch, ...)."""
    base = module.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if candidate in files:
            return candidate
    return None


def imported_files(source: str, path: str, files: set[str], module_level_only: bool = False) -> list[str]:
    """The repository files one file imports: `import a.b`, `from a.b import c` (c a submodule
    or a name in a.b), with every package __init__.py on the way."""
    tree = ast.parse(source, filename=path)
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                file = module_file(".".join(parts[:depth]), files)
                if file is not None and file not in found:
                    found.append(file)
    return found


def forbidden_files(course: Course, files: set[str]) -> set[str]:
    """What the course must never ship: the A+ work and the other courses' student files."""
    others = {method.module for method in all_methods() if method.module} - set(course.modules)
    a_plus_rows = {module_file(family.module, files) for family in OPTION_FAMILIES if not family.taught}
    return {file for file in files if file.startswith(SOLUTION_ONLY) or file in others or file in a_plus_rows}


def closure(course: Course, read, files: set[str]) -> list[str]:
    """The Python files the course ships, in the order they are reached. `read(path)` gives a
    file's text; `files` are the repository's files. ShippingError names the chain of imports
    to a forbidden file."""
    forbidden = forbidden_files(course, files)
    rows = [module_file(family.module, files) for family in course_families(course)]
    reached_from: dict[str, str | None] = {}
    queue = []
    for entry in [*ENTRY_POINTS, *rows]:
        if entry is None or entry not in files:
            raise ShippingError(f"{entry or 'an option family module'}: an entry point of the {course.name} "
                                "skeleton is not in the repository")
        reached_from.setdefault(entry, None)
        queue.append(entry)
    student_tests = sorted(f for f in files if f.startswith(STUDENT_TESTS) and f.endswith(".py"))
    for test in student_tests:  # shipped whole; their module-level imports must ship too
        for file in imported_files(read(test), test, files, module_level_only=True):
            if file not in reached_from:
                reached_from[file] = test
                queue.append(file)
    while queue:
        path = queue.pop(0)
        if path in forbidden:
            raise ShippingError(f"the {course.name} skeleton would ship {path}, which belongs to "
                                f"{'the solution only' if path.startswith(SOLUTION_ONLY) else 'another course'}: "
                                f"{' -> '.join(chain(path, reached_from))} (import it only through its row of "
                                "the option table)")
        for file in imported_files(read(path), path, files):
            if file not in reached_from:
                reached_from[file] = path
                queue.append(file)
    return [*reached_from, *(test for test in student_tests if test not in reached_from)]


def chain(path: str, reached_from: dict[str, str | None]) -> list[str]:
    """The files from an entry point to `path`, each importing the next."""
    links = [path]
    while reached_from[links[-1]] is not None:
        links.append(reached_from[links[-1]])
    return links[::-1]


def shipped_path(path: str) -> str:
    """Where a solution file lies in a skeleton: support/ moves to minllama/support/."""
    return MOVED_TO + path[len(MOVED_PACKAGE):] if path.startswith(MOVED_PACKAGE + "/") else path


def follow_the_move(text: str) -> str:
    """A shipped file's text with the support package named where it lies in a skeleton: imports
    (`support.course` -> `minllama.support.course`) and paths (`support/` -> `minllama/support/`)."""
    text = re.sub(r"(?<![\w./])support\.(?=[a-z_])", "minllama.support.", text)
    text = re.sub(r"(?<![\w./])support/", "minllama/support/", text)
    return re.sub(r"^from support import ", "from minllama.support import ", text, flags=re.M)
