"""Write the student repository from the reference solution: `python instructor/make_skeleton.py OUT_DIR`.

The solution on `main` is the one source of truth. Every piece students implement sits inside a
function body, after its docstring, between two comment lines:

        # BEGIN SOLUTION
        ...the reference code...
        # END SOLUTION

In the skeleton the lines from BEGIN to END become `# todo` and `raise NotImplementedError`, at
the same indentation, so the signature and the docstring that teaches the piece stay. A region is
named by its file and the function around it, e.g. `llama.py:RMSNorm._norm`.

A course *variant* is more than a set of regions. Its facts are its entry in course.py (the one
table every tool reads): rmsnorm, the LUH course (RMSNorm, plain temperature sampling, AdamW
without clipping, no LoRA), and layernorm, the 2025 CMU course (LayerNorm, epsilon sampling,
clipping, LoRA). From them this tool derives what the skeleton ships (course_rewrites): the
course's name in course.py, its grader reference files under the upstream names
(`optimizer_test.npy`, `sanity_check.data`), listed alone in its setup.sh asset table and
assets.sha256 (so that setup.sh lays out and verifies the course's own files), its `--option`
values, its method modules (no lora.py for LUH), and a few constants, defaults, parameters and
statements so its code matches the course. The Python rewrites are made on the syntax tree's
positions (constants, parameter defaults, argparse choices, a parameter, a keyword argument, the
statements using a name, docstring paragraphs), never by searching raw text; they see the whole
solution, before the regions are blanked. A rewrite whose target is missing is an error: when a
source file changes shape, this tool says so instead of shipping a half-rewritten file.

Lines only one variant should see can also be fenced in the source:
        # BEGIN VARIANT layernorm
        ...
        # END VARIANT
The fenced lines are kept in the named variant(s) (comma-separated) and dropped from the others;
the two marker lines are always dropped. On `main` they are plain comments.

Only files git tracks ship (so make the skeleton from a git checkout): never untracked files of
the instructor's checkout. The Python files that ship are the import closure of the course's entry
points (shipping.py): what the course's commands and checks reach, and nothing else; support/ moves
to minllama/support/ on the way. Beside them: the root's documents and set-up files and
`tests/student/`, the checks students run themselves (never the instructor tools, the benchmarks or
the pytest suite, which tests internals against the solution). structure.md is the solution's, without what the course does not ship
(skeleton_docs.py); the README is written for the course. Every Python file written is parsed and
compiled before the tool reports success. instructor/fill_skeleton.py puts the solution back into
a skeleton's todos, to check the skeleton.
"""

import argparse
import ast
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # course.py, the table of the course variants
from skeleton_docs import skeleton_structure, student_readme  # noqa: E402
from shipping import ShippingError, closure, follow_the_move, shipped_path  # noqa: E402
from support.course import COURSES, Course  # noqa: E402

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
VARIANT_BEGIN, VARIANT_END = "# BEGIN VARIANT", "# END VARIANT"

STUDENT_TESTS = "tests/student/"  # the one part of tests/ that ships
STRUCTURE = "structure.md"  # the students' guide to the files: only what their course ships


class SkeletonError(ValueError):
    """The source does not have the shape this tool needs; the message names the file and line."""


# ----------------------------------------------------------------------------- solution regions

@dataclass(frozen=True)
class Region:
    path: str  # relative to the repository, POSIX separators
    function: str  # qualified name of the function around it, e.g. "Attention.forward"
    begin: int  # 1-based line of the BEGIN marker
    end: int  # 1-based line of the END marker
    indent: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.function}"


def _marker_lines(source: str, path: str) -> list[tuple[int, str, str]]:
    """(line, marker text, indentation) of every comment that is a region or variant marker.

    tokenize, not a text search, so a marker quoted inside a string or docstring is not one."""
    markers = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        text = tok.string.strip()
        if text in (BEGIN, END) or text.startswith((VARIANT_BEGIN, VARIANT_END)):
            line = tok.line.rstrip("\r\n")
            if line.strip() != text:
                raise SkeletonError(f"{path}:{tok.start[0]}: a marker must be alone on its line: {line.strip()!r}")
            markers.append((tok.start[0], text, line[: len(line) - len(line.lstrip())]))
    return markers


def _functions(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """(qualified name, node) of every function, methods as Class.method."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((name, child))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def find_regions(source: str, path: str) -> list[Region]:
    """The solution regions of one file, in order. Unpaired, nested or mis-indented markers and
    regions outside a function body are errors."""
    functions = _functions(ast.parse(source, filename=path))
    regions, open_marker = [], None
    for line, text, indent in _marker_lines(source, path):
        if text == BEGIN:
            if open_marker:
                raise SkeletonError(f"{path}:{line}: {BEGIN} inside the region opened on line {open_marker[0]}")
            open_marker = (line, indent)
        elif text == END:
            if not open_marker:
                raise SkeletonError(f"{path}:{line}: {END} without a {BEGIN}")
            begin, begin_indent = open_marker
            if indent != begin_indent:
                raise SkeletonError(f"{path}:{line}: {END} is not indented like its {BEGIN} (line {begin})")
            # ast spans end at the last statement, before a trailing END comment: match on BEGIN.
            inside = [(name, node) for name, node in functions
                      if node.lineno < begin < node.end_lineno]
            if not inside:
                raise SkeletonError(f"{path}:{begin}: a solution region must be inside a function body")
            name, _ = max(inside, key=lambda item: item[1].lineno)  # the innermost function
            regions.append(Region(path, name, begin, line, indent))
            open_marker = None
    if open_marker:
        raise SkeletonError(f"{path}:{open_marker[0]}: {BEGIN} is never closed")
    return regions


def fill_regions(source: str, regions: list[Region], blank: set[str]) -> str:
    """Replace the regions whose id is in `blank` by a todo; keep the others' code, drop their markers."""
    lines = source.splitlines(keepends=True)
    for region in sorted(regions, key=lambda r: r.begin, reverse=True):
        if region.id in blank:
            todo = [f"{region.indent}# todo\n", f"{region.indent}raise NotImplementedError\n"]
            lines[region.begin - 1: region.end] = todo
        else:
            del lines[region.end - 1]
            del lines[region.begin - 1]
    return "".join(lines)


def select_variant_lines(source: str, path: str, variant: str) -> str:
    """Keep the lines fenced by `# BEGIN VARIANT a,b` ... `# END VARIANT` only in variants a, b."""
    lines = source.splitlines(keepends=True)
    drop, open_marker = set(), None
    for line, text, _ in _marker_lines(source, path):
        if text.startswith(VARIANT_BEGIN):
            if open_marker:
                raise SkeletonError(f"{path}:{line}: nested {VARIANT_BEGIN}")
            names = {name.strip() for name in text[len(VARIANT_BEGIN):].split(",") if name.strip()}
            unknown = names - set(VARIANTS)
            if not names or unknown:
                raise SkeletonError(f"{path}:{line}: {VARIANT_BEGIN} needs variant names from {sorted(VARIANTS)}")
            open_marker = (line, names)
        elif text == VARIANT_END:
            if not open_marker:
                raise SkeletonError(f"{path}:{line}: {VARIANT_END} without a {VARIANT_BEGIN}")
            begin, names = open_marker
            drop.update({begin, line} if variant in names else set(range(begin, line + 1)))
            open_marker = None
    if open_marker:
        raise SkeletonError(f"{path}:{open_marker[0]}: {VARIANT_BEGIN} is never closed")
    return "".join(text for number, text in enumerate(lines, start=1) if number not in drop)


# ----------------------------------------------------------------------------- syntax-tree rewrites

def literal(value) -> str:
    """Python source for a constant, in this repository's style (double-quoted strings)."""
    if isinstance(value, str):
        return '"' + repr(value)[1:-1].replace('"', '\\"') + '"' if "'" not in value else repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _byte_offset(source: str, position: tuple[int, int]) -> int:
    """The offset in source.encode() of a (line, column) position as ast gives them: 1-based
    lines, columns counting UTF-8 bytes."""
    line, column = position
    return sum(len(text.encode()) for text in source.splitlines(keepends=True)[: line - 1]) + column


def _start(node: ast.AST) -> tuple[int, int]:
    return node.lineno, node.col_offset


def _end(node: ast.AST) -> tuple[int, int]:
    return node.end_lineno, node.end_col_offset


def _source_between(source: str, start: tuple[int, int], end: tuple[int, int]) -> str:
    return source.encode()[_byte_offset(source, start): _byte_offset(source, end)].decode()


def _replace_span(source: str, start: tuple[int, int], end: tuple[int, int], text: str) -> str:
    """Replace the source from position `start` to `end` by `text`."""
    data = source.encode()
    return (data[: _byte_offset(source, start)] + text.encode() + data[_byte_offset(source, end):]).decode()


def _replace_node(source: str, node: ast.AST, text: str) -> str:
    """Replace the source span of `node` by `text`."""
    return _replace_span(source, _start(node), _end(node), text)


def _definition(tree: ast.Module, qualified: str) -> ast.AST:
    """The class or function named by a dotted path (e.g. "AdamW.step"); the module for ""."""
    node = tree
    for name in filter(None, qualified.split(".")):
        matches = [child for child in node.body if getattr(child, "name", None) == name
                   and isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        if not matches:
            raise LookupError(f"no {qualified}")
        node = matches[0]
    return node


def set_assignment(qualified: str, value) -> Callable[[str], str]:
    """Rewrite `NAME = ...` (module level) or a class field `Class.NAME: T = ...` to `repr(value)`."""
    def rewrite(source: str) -> str:
        scope, _, name = qualified.rpartition(".")
        for node in _definition(ast.parse(source), scope).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and any(
                    isinstance(t, ast.Name) and t.id == name for t in targets):
                return _replace_node(source, node.value, literal(value))
        raise LookupError(f"no assignment to {qualified}")
    rewrite.description = f"{qualified} = {value!r}"
    return rewrite


def set_parameter_default(function: str, parameter: str, value) -> Callable[[str], str]:
    """Rewrite the default value of one parameter of a function or method."""
    def rewrite(source: str) -> str:
        for name, node in _functions(ast.parse(source)):
            if name != function:
                continue
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(arg, default) for arg, default in zip(args.kwonlyargs, args.kw_defaults) if default]
            for arg, default in pairs:
                if arg.arg == parameter:
                    return _replace_node(source, default, literal(value))
            raise LookupError(f"{function} has no parameter {parameter} with a default")
        raise LookupError(f"no function {function}")
    rewrite.description = f"{function}({parameter}={value!r})"
    return rewrite


def _add_argument_call(tree: ast.Module, flag: str) -> ast.Call:
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == flag):
            return node
    raise LookupError(f"no add_argument({flag!r}, ...)")


def _keyword(call: ast.Call, name: str, flag: str) -> ast.keyword:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword
    raise LookupError(f"add_argument({flag!r}) has no {name}=")


def keep_cli_choices(flag: str, kept: tuple[str, ...]) -> Callable[[str], str]:
    """Keep only the values `kept` in the literal `choices=[...]` of an argparse option. Choices
    computed from course.py (course.options_here()) are already the course's: left as they are."""
    def rewrite(source: str) -> str:
        choices = _keyword(_add_argument_call(ast.parse(source), flag), "choices", flag).value
        try:
            values = ast.literal_eval(choices)
        except ValueError:
            return source
        absent = [value for value in kept if value not in values]
        if absent:
            raise LookupError(f"{flag} has no choice {absent}")
        return _replace_node(source, choices, literal(type(values)(v for v in values if v in kept)))
    rewrite.description = f"{flag} with only the choices {list(kept)}"
    return rewrite


def drop_parameter(function: str, parameter: str) -> Callable[[str], str]:
    """Remove one parameter (not the first), with its annotation and default, from a signature."""
    def rewrite(source: str) -> str:
        args = _definition(ast.parse(source), function).args
        positional = args.posonlyargs + args.args
        defaults = [None] * (len(positional) - len(args.defaults)) + args.defaults
        # (parameter, the node its text ends with), in source order
        items = [(arg, default or arg) for arg, default in zip(positional, defaults)]
        items += [(args.vararg, args.vararg)] if args.vararg else []
        items += [(arg, default or arg) for arg, default in zip(args.kwonlyargs, args.kw_defaults)]
        items += [(args.kwarg, args.kwarg)] if args.kwarg else []
        index = next((i for i, (arg, _) in enumerate(items) if arg.arg == parameter), None)
        if not index:  # absent, or first: there is no comma before it to take along
            raise LookupError(f"{function} has no parameter {parameter} after its first")
        previous, (arg, last) = items[index - 1][1], items[index]
        if set(_source_between(source, _end(previous), _start(arg))) & set("*/"):
            raise LookupError(f"{parameter} follows a * or / in {function}")
        return _replace_span(source, _end(previous), _end(last), "")  # with the comma before it
    rewrite.description = f"{function} without the parameter {parameter}"
    return rewrite


def drop_keyword(function: str, callee: str, keyword: str) -> Callable[[str], str]:
    """Remove the argument `keyword=...` (not the first argument) from every call of `callee`
    (a name or a method) inside `function`."""
    def calls(source: str) -> list[ast.Call]:
        return [node for node in ast.walk(_definition(ast.parse(source), function))
                if isinstance(node, ast.Call) and keyword in (k.arg for k in node.keywords)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == callee]

    def rewrite(source: str) -> str:
        if not calls(source):
            raise LookupError(f"no call {callee}(..., {keyword}=...) in {function}")
        while found := calls(source):  # one at a time, re-parsing: the positions after it move
            arguments = sorted(found[0].args + found[0].keywords, key=_start)
            index = next(i for i, node in enumerate(arguments) if getattr(node, "arg", None) == keyword)
            if index == 0:
                raise LookupError(f"{keyword}= is the first argument of {callee}(...) in {function}")
            source = _replace_span(source, _end(arguments[index - 1]), _end(arguments[index]), "")
        return source
    rewrite.description = f"{function} without {callee}(..., {keyword}=...)"
    return rewrite


_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")  # the statement lists of compound statements
_NAMED = ((ast.Name, "id"), (ast.Attribute, "attr"), (ast.keyword, "arg"), (ast.arg, "arg"), (ast.Constant, "value"))


def _uses(node: ast.AST, name: str) -> bool:
    """Whether `name` appears in `node` as a variable, attribute, keyword, parameter or string constant."""
    return any(isinstance(child, kind) and getattr(child, field) == name
               for child in ast.walk(node) for kind, field in _NAMED)


def _statements_using(body: list, name: str):
    """The statements of `body`, at any depth, that use `name`: a compound statement whose header
    (the test of an if, the iterable of a for, ...) uses it counts whole, else its inner statements do."""
    for statement in body:
        header = [value for field, value in ast.iter_fields(statement) if field not in _BLOCKS]
        if any(_uses(node, name) for value in header for node in (value if isinstance(value, list) else [value])
               if isinstance(node, ast.AST)):
            yield statement
            continue
        for field in _BLOCKS:
            for child in getattr(statement, field, []):
                inner = [child] if isinstance(child, ast.stmt) else child.body  # except handlers, match cases
                yield from _statements_using(inner, name)


def drop_statements(function: str, name: str) -> Callable[[str], str]:
    """Remove every statement of `function` that uses `name` (see _statements_using), with the
    comment lines right above it; a blank line left doubled is removed too."""
    def rewrite(source: str) -> str:
        found = list(_statements_using(_definition(ast.parse(source), function).body, name))
        if not found:
            raise LookupError(f"no statement of {function} uses {name}")
        lines = source.splitlines(keepends=True)
        for statement in sorted(found, key=_start, reverse=True):
            first, last = statement.lineno, statement.end_lineno  # 1-based, inclusive
            if lines[first - 1][: statement.col_offset].strip():
                raise LookupError(f"line {first} holds more than the statement that uses {name}")
            while first > 1 and lines[first - 2].lstrip().startswith("#") \
                    and not lines[first - 2].strip().startswith((BEGIN, END, VARIANT_BEGIN, VARIANT_END)):
                first -= 1
            if 1 < first and last < len(lines) and not lines[first - 2].strip() and not lines[last].strip():
                last += 1
            del lines[first - 1: last]
        return "".join(lines)
    rewrite.description = f"{function} without the statements that use {name}"
    return rewrite


def drop_docstring_paragraphs(qualified: str, word: str) -> Callable[[str], str]:
    """Remove the paragraphs (blank-line separated) that mention `word` from the docstring of a
    class or function, or of the module for "". The first paragraph, the summary, must not."""
    def rewrite(source: str) -> str:
        node = _definition(ast.parse(source), qualified)
        if ast.get_docstring(node, clean=False) is None:
            raise LookupError(f"{qualified or 'the module'} has no docstring")
        literal = node.body[0].value
        text = ast.get_source_segment(source, literal)
        quotes = text[-3:]
        if quotes not in ('"""', "'''"):
            raise LookupError(f"the docstring of {qualified or 'the module'} is not triple-quoted")
        opening = text.index(quotes) + 3
        body = text[opening:-3].rstrip()
        parts = re.split(r"(\n[ \t]*\n)", body)  # paragraph, separator, paragraph, ...
        paragraphs, separators = parts[0::2], parts[1::2]
        if word in paragraphs[0]:
            raise LookupError(f"the summary of the docstring of {qualified or 'the module'} mentions {word}")
        kept = paragraphs[0] + "".join(separator + paragraph for separator, paragraph in zip(separators, paragraphs[1:])
                                       if word not in paragraph)
        if kept == body:
            raise LookupError(f"no paragraph of the docstring of {qualified or 'the module'} mentions {word}")
        return _replace_node(source, literal, text[:opening] + kept + text[opening + len(body):])
    rewrite.description = f"the docstring of {qualified or 'the module'} without the paragraphs about {word}"
    return rewrite


# ----------------------------------------------------------------------------- the asset table

def _rename_rows(source: str, rows: range, name_of: Callable[[str], str], renamed: Callable[[str, str], str],
                 renames: dict, drops: set, what: str) -> str:
    """Rename (renames: old -> new) or drop the rows (line numbers `rows`, 0-based) named by name_of;
    every name in renames and drops must have exactly one row."""
    lines = source.splitlines(keepends=True)
    wanted = set(renames) | drops
    seen = [name_of(lines[i]) for i in rows if name_of(lines[i]) in wanted]
    if sorted(seen) != sorted(wanted):
        raise LookupError(f"{what} must have one row for each of {sorted(wanted)}, has {sorted(seen)}")
    for i in reversed(rows):
        name = name_of(lines[i])
        if name in drops:
            del lines[i]
        elif name in renames:
            lines[i] = renamed(lines[i], renames[name])
    return "".join(lines)


def rename_setup_assets(renames: dict, drops: set) -> Callable[[str], str]:
    """In setup.sh's table (`ASSETS="` ... `"`, one `path in the repository|mirror path|...` row per
    asset), give assets another path in the repository, or drop them."""
    def rewrite(source: str) -> str:
        lines = source.splitlines()
        if 'ASSETS="' not in lines or '"' not in lines[lines.index('ASSETS="'):]:
            raise LookupError('no ASSETS="..." table')
        first = lines.index('ASSETS="') + 1
        rows = range(first, lines.index('"', first))
        return _rename_rows(source, rows, lambda row: row.split("|")[0].strip(),
                            lambda row, new: new + row[row.index("|"):], renames, drops, "setup.sh's ASSETS table")
    rewrite.description = f"setup.sh's assets renamed {renames}, without {sorted(drops)}"
    return rewrite


def rename_checksums(renames: dict, drops: set) -> Callable[[str], str]:
    """In a sha256sum file (`DIGEST  PATH` lines), give files another path, or drop them."""
    def rewrite(source: str) -> str:
        return _rename_rows(source, range(len(source.splitlines())), lambda row: row.split(maxsplit=1)[-1].strip(),
                            lambda row, new: f"{row.split(maxsplit=1)[0]}  {new}\n", renames, drops, "the checksum list")
    rewrite.description = f"checksums renamed {renames}, without {sorted(drops)}"
    return rewrite


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
        if any(marker in (BEGIN, END) for _, marker, _ in _marker_lines(text, path)):
            raise SkeletonError(f"{path}: solution markers left in the skeleton")
        target.write_text(follow_the_move(text))
        shutil.copymode(root / path, target)

    for shipped, original in variant.references.items():
        shutil.copy2(assets / original, out_dir / shipped)
    (out_dir / "README.md").write_text(student_readme(variant.course, blanked))
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
