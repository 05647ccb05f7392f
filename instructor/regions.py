"""Solution regions and variant fences: how the solution marks what the students write, and what
only one course sees.

Every piece students implement sits inside a function body, after its docstring, between two
comment lines:

        # BEGIN SOLUTION
        ...the reference code...
        # END SOLUTION

In the skeleton the lines from BEGIN to END become `# todo` and `raise NotImplementedError`, at
the same indentation, so the signature and the docstring that teaches the piece stay. A region is
named by its file and the function around it, e.g. `llama.py:RMSNorm._norm`.

Lines only one variant should see can also be fenced in the source:
        # BEGIN VARIANT layernorm
        ...
        # END VARIANT
The fenced lines are kept in the named variant(s) (comma-separated; the names are the courses of
course.py) and dropped from the others; the two marker lines are always dropped. On `main` they are
plain comments.

Markers are found with tokenize, never by a text search, so a marker quoted in a string is not one;
a marker not alone on its line, an unpaired, nested or mis-indented one and a region outside a
function body are errors (SkeletonError, which the rest of the skeleton tools raise too).
"""

import ast
import io
import tokenize
from dataclasses import dataclass

from support.course import COURSES

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
VARIANT_BEGIN, VARIANT_END = "# BEGIN VARIANT", "# END VARIANT"


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


def marker_lines(source: str, path: str) -> list[tuple[int, str, str]]:
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


def qualified_functions(tree: ast.AST) -> list[tuple[str, ast.AST]]:
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
    functions = qualified_functions(ast.parse(source, filename=path))
    regions, open_marker = [], None
    for line, text, indent in marker_lines(source, path):
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


# ----------------------------------------------------------------------------- variant fences

def select_variant_lines(source: str, path: str, variant: str) -> str:
    """Keep the lines fenced by `# BEGIN VARIANT a,b` ... `# END VARIANT` only in variants a, b
    (courses of course.py)."""
    lines = source.splitlines(keepends=True)
    drop, open_marker = set(), None
    for line, text, _ in marker_lines(source, path):
        if text.startswith(VARIANT_BEGIN):
            if open_marker:
                raise SkeletonError(f"{path}:{line}: nested {VARIANT_BEGIN}")
            names = {name.strip() for name in text[len(VARIANT_BEGIN):].split(",") if name.strip()}
            unknown = names - set(COURSES)
            if not names or unknown:
                raise SkeletonError(f"{path}:{line}: {VARIANT_BEGIN} needs variant names from {sorted(COURSES)}")
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
