"""Which way imports point: the assignment at the root, support/ below it, minllama/ above it.

Students edit the root modules and the graders import them alone, so they must never need the
package above them; support/ holds what they stand on, so it must never reach up into them or into
minllama/. Imports inside functions count as much as those at the top: a lazy upward import is a
cycle waiting for the first call.

import-linter checks the packages' contracts (.importlinter: minllama's layers, support below
minllama); it sees packages only, so the root modules are checked here by parsing them against
ROOT_MAY_IMPORT. With the two graphs below acyclic (the packages' modules, the root modules) no cycle
is left: one through two parts would need support to import a model file, or something that
minllama imports to import minllama, and the tables allow neither.
"""

import ast
import graphlib
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from testkit import require_module
from utils import REPO_ROOT

grimp = require_module("grimp")
require_module("importlinter")

PACKAGES = ("minllama", "support")
ROOT_MODULES = sorted(path.stem for path in REPO_ROOT.glob("*.py"))
# Every name an import of the project can start with: the root modules and the folders of Python code
# (instructor/, bench/ and tests/ too, which nothing here may import).
PROJECT = set(ROOT_MODULES) | {path.parent.name for path in REPO_ROOT.glob("*/*.py")}

BOTTOM = {"config", "utils"}  # they import nothing of the project, so everything may import them
MODEL = {"base_llama", "rope", "llama", "lora", "classifier", "tokenizer", "optimizer"}  # what students edit
GRADER_CHECKS = {"rope_test", "optimizer_test", "sanity_check", "prepare_submit"}  # run on the student's files

# The project's top-level names each root module may import; only the command line reaches minllama.
ROOT_MAY_IMPORT = {
    **{name: set() for name in BOTTOM},
    **{name: MODEL - {name} | BOTTOM | {"support"} for name in MODEL},
    **{name: MODEL | BOTTOM | {"support"} for name in GRADER_CHECKS},
    "run_llama": MODEL | BOTTOM | {"support", "minllama"},
}
# And each package: support stands below the model files, minllama above them (but below the command line's
# entry point and the grader checks, which it never runs by importing).
PACKAGE_MAY_IMPORT = {
    "support": BOTTOM | {"support"},
    "minllama": MODEL | BOTTOM | {"support", "minllama"},
}


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of the project in `path`, at module level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue  # relative imports stay inside their package
        found += [(node.lineno, name) for name in names if name.split(".")[0] in PROJECT]
    return sorted(found)


def forbidden_imports(path: Path, allowed: set[str]) -> list[str]:
    may = ", ".join(sorted(allowed)) or "nothing of the project"
    return [f"{path.relative_to(REPO_ROOT)}:{line}: imports {name}; allowed: {may}"
            for line, name in project_imports(path) if name.split(".")[0] not in allowed]


def test_import_linter_contracts():
    """minllama's layers (cli > classify | instruct | pretraining | tools > methods > inference >
    training) and support never importing minllama, as .importlinter states them. In a process of its
    own: lint-imports reconfigures logging, which would silence every logger this one has made so far."""
    result = subprocess.run([Path(sys.executable).with_name("lint-imports"), "--no-cache"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, f"import-linter: a contract is broken\n{result.stdout}{result.stderr}"


def test_the_packages_modules_import_no_cycle():
    """Every module of minllama and support, imports inside functions included (grimp reads them all)."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    imports = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    try:
        graphlib.TopologicalSorter(imports).prepare()
    except graphlib.CycleError as error:
        cycle = error.args[1][::-1]  # graphlib lists each module before the one that imports it
        steps = [f"{importer} line {graph.get_import_details(importer=importer, imported=imported)[0]['line_number']}"
                 f" imports {imported}" for importer, imported in pairwise(cycle)]
        pytest.fail("an import cycle:\n  " + "\n  ".join(steps))


def test_root_modules_import_only_what_the_table_allows():
    """Each root module against ROOT_MAY_IMPORT, and the packages' modules against PACKAGE_MAY_IMPORT."""
    assert sorted(ROOT_MAY_IMPORT) == ROOT_MODULES, \
        "ROOT_MAY_IMPORT must list every root module, and only those: say what a new one may import"
    problems = [problem for name in ROOT_MODULES
                for problem in forbidden_imports(REPO_ROOT / f"{name}.py", ROOT_MAY_IMPORT[name])]
    problems += [problem for package, allowed in PACKAGE_MAY_IMPORT.items()
                 for path in sorted((REPO_ROOT / package).rglob("*.py"))
                 for problem in forbidden_imports(path, allowed)]
    assert not problems, ("imports against the layers (root modules: ROOT_MAY_IMPORT, packages: PACKAGE_MAY_IMPORT "
                          "in tests/test_layers.py):\n  " + "\n  ".join(problems))


def test_root_modules_import_no_cycle():
    imports = {name: {imported.split(".")[0] for _, imported in project_imports(REPO_ROOT / f"{name}.py")}
               & set(ROOT_MODULES) for name in ROOT_MODULES}
    try:
        graphlib.TopologicalSorter(imports).prepare()
    except graphlib.CycleError as error:
        pytest.fail("an import cycle between root modules: " + " imports ".join(error.args[1][::-1]))

