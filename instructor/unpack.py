"""Unpack a submission without letting it out: grade.py's first step.

A submission is a zip made by prepare_submit.py (one folder named after the Andrew ID) or a
folder. Absolute paths, `..`, symlinks, too many files or too many bytes are refused: sizes are
checked in the zip headers and again while streaming, since headers can lie (a zip bomb declares
a small size and inflates to gigabytes). Which course a submission's files were written for is
read here too (course_evidence), before any of its code runs.
"""

import ast
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from support.course import COURSES


class Rejected(Exception):
    """The submission cannot be graded safely; the message says why."""


@dataclass
class ArchiveLimits:
    max_files: int = 2000
    max_bytes: int = 200 * 2**20


def _check_member_name(name: str) -> None:
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise Rejected(f"absolute path in the archive: {name!r}")
    if ".." in parts:
        raise Rejected(f"path with '..' in the archive: {name!r}")
    if "\0" in name:
        raise Rejected(f"file name with a NUL byte in the archive: {name!r}")


def safe_extract_zip(zip_path: Path, dest: Path, limits: ArchiveLimits) -> None:
    """Extract `zip_path` into `dest`, refusing anything that could escape it or exhaust the disk."""
    dest.mkdir(parents=True)
    root = dest.resolve()
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise Rejected(f"{zip_path.name} is not a zip file") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_files:
            raise Rejected(f"the archive has {len(infos)} entries; at most {limits.max_files} are accepted")
        declared = sum(info.file_size for info in infos)
        if declared > limits.max_bytes:
            raise Rejected(f"the archive unpacks to {declared} bytes; at most {limits.max_bytes} are accepted")
        for info in infos:
            _check_member_name(info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise Rejected(f"symbolic link in the archive: {info.filename!r}")
        written = 0
        for info in infos:
            target = (dest / info.filename).resolve()
            if root not in target.parents and target != root:
                raise Rejected(f"{info.filename!r} would be written outside the extraction folder")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as source, open(target, "xb") as sink:
                    member_bytes = 0
                    while chunk := source.read(1 << 20):
                        member_bytes += len(chunk)
                        written += len(chunk)
                        if member_bytes > info.file_size or written > limits.max_bytes:
                            raise Rejected(f"{info.filename!r} unpacks to more bytes than its header says "
                                           f"(a zip bomb?); stopped at {written} bytes")
                        sink.write(chunk)
            except FileExistsError:
                raise Rejected(f"{info.filename!r} appears twice in the archive") from None
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as err:
                raise Rejected(f"cannot extract {info.filename!r}: {err}") from None


def safe_copy_folder(folder: Path, dest: Path, limits: ArchiveLimits) -> None:
    """Copy a submission folder, with the same limits as a zip; symlinks are rejected, not followed."""
    files, total = 0, 0
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root, name)
            if path.is_symlink():
                raise Rejected(f"symbolic link in the submission: {path.relative_to(folder)}")
        for name in names:
            path = Path(root, name)
            files += 1
            total += path.stat().st_size
            if files > limits.max_files or total > limits.max_bytes:
                raise Rejected(f"the folder has more than {limits.max_files} files or {limits.max_bytes} bytes")
    shutil.copytree(folder, dest, symlinks=True)


def code_root(extracted: Path) -> Path:
    """The submission's top-level folder (upstream: one folder named after the Andrew ID)."""
    entries = [p for p in extracted.iterdir() if not p.name.startswith(("_", "."))]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return extracted



def course_evidence(code: Path) -> dict[str, list[str]]:
    """What in a submission's files says which course it was written for, by course: the course
    its skeleton's table names (THIS_COURSE, read from the syntax tree, never run), the files only
    one course has (lora.py and the LoRA outputs: the CMU course), and the LUH course's AdamW,
    which has no max_grad_norm at all. Empty when nothing tells."""
    evidence: dict[str, list[str]] = {}
    for table in (code / "minllama" / "support" / "course.py", code / "support" / "course.py"):
        named = _assigned_string(table, "THIS_COURSE") if table.is_file() else None
        if named in COURSES:
            evidence.setdefault(named, []).append(f"{table.relative_to(code)} names it (THIS_COURSE = {named!r})")
    for course in COURSES.values():
        others = set().union(*(c.output_files() | set(c.modules) for c in COURSES.values() if c is not course))
        own = [name for name in [*course.modules, *sorted(course.output_files())]  # its modules first
               if name not in others and (code / name).is_file()]
        if own:
            evidence.setdefault(course.name, []).append(f"it has {', '.join(own)}, which only this course has")
    optimizer = code / "optimizer.py"
    if optimizer.is_file() and "max_grad_norm" not in optimizer.read_text(errors="replace"):
        unclipped = [c.name for c in COURSES.values() if c.max_grad_norm is None]
        for name in unclipped:
            evidence.setdefault(name, []).append("its optimizer.py has no max_grad_norm (this course's AdamW does "
                                                 "not clip)")
    return evidence


def _assigned_string(path: Path, name: str) -> str | None:
    """The string a module assigns to `name` at its top level, if it does."""
    try:
        tree = ast.parse(path.read_text(errors="replace"))
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant) \
                and any(isinstance(t, ast.Name) and t.id == name for t in getattr(node, "targets", [node.target])):
            return node.value.value if isinstance(node.value.value, str) else None
    return None
