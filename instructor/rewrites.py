"""The rewrites that make the solution's files a course's: on Python's syntax tree, and on the
asset tables of setup.sh and assets.sha256.

A course differs from the solution in a few constants, parameter defaults, argparse choices, a
parameter, a keyword argument, the statements using a name and docstring paragraphs (make_skeleton.py
course_rewrites lists them per course). Each rewrite here is a function of the whole source text
that returns the rewritten text, with a `description` for error messages. It is made on the
positions the syntax tree gives (ast's lines and UTF-8 byte columns), never by searching raw text,
so that a name in a comment or a string is not touched, and the rest of the file keeps its layout
and comments. A rewrite sees the whole solution, before the regions are blanked.

A rewrite whose target is missing raises LookupError (make_skeleton.py turns it into a
SkeletonError naming the file and the rewrite): when a source file changes shape, the tool says so
instead of shipping a half-rewritten file.
"""

import ast
import re
from typing import Callable

from regions import BEGIN, END, VARIANT_BEGIN, VARIANT_END, qualified_functions


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


def definition(tree: ast.Module, qualified: str) -> ast.AST:
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
        for node in definition(ast.parse(source), scope).body:
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
        for name, node in qualified_functions(ast.parse(source)):
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
        args = definition(ast.parse(source), function).args
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
        return [node for node in ast.walk(definition(ast.parse(source), function))
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
        found = list(_statements_using(definition(ast.parse(source), function).body, name))
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
        node = definition(ast.parse(source), qualified)
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
        return _rename_rows(source, range(len(source.splitlines())),
                            lambda row: row.split(maxsplit=1)[-1].strip(),
                            lambda row, new: f"{row.split(maxsplit=1)[0]}  {new}\n", renames, drops,
                            "the checksum list")
    rewrite.description = f"checksums renamed {renames}, without {sorted(drops)}"
    return rewrite
