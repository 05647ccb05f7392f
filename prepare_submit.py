"""Create or check your submission zip.

    python prepare_submit.py PATH/TO/YOUR/REPO ANDREWID    # writes ANDREWID.zip, then checks it
    python prepare_submit.py ANDREWID.zip ANDREWID          # checks an existing zip

The zip must hold exactly one top-level folder named after your Andrew ID, containing your code
and output files (REQUIRED_FILES below), and be at most 10 MB: leave model checkpoints out
(link to them in your report instead). Submissions that fail this check are graded down, so
run it on the exact file you upload. `--variant` picks the course's file list; the default is
the course this copy of the assignment was made for.
"""

import argparse
import os
import re
import sys
import zipfile
from pathlib import Path

from support import course

MAX_ZIP_BYTES = 10 * 1024 * 1024
DEFAULT_VARIANT = course.default().name  # this skeleton's course ("rmsnorm": LUH, "layernorm": CMU 2025)

# What each course's upstream prepare_submit.py requires (plus the files holding your code): course.py.
REQUIRED_FILES = {c.name: frozenset(c.student_code) | c.output_files() for c in course.COURSES.values()}
# The outputs of the optional advanced (A+) work: all four or none.
ADVANCED_FILES = frozenset(f"{data}-{split}-advanced-output.txt" for data in ("sst", "cfimdb")
                           for split in ("dev", "test"))
OPTIONAL_FILES = ADVANCED_FILES | {"feedback.txt"}  # and ANDREWID-report.pdf

# Never zipped when creating from a folder: environments, caches, data, checkpoints, other zips.
SKIPPED_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", "data", "runs"}
SKIPPED_SUFFIXES = (".zip", ".pt", ".pth", ".bin", ".gguf", ".safetensors", ".pyc", ".ckpt",
                    ".tmp", ".part")  # and temporary files, e.g. an interrupted save's .NAME.pt.PID.tmp
ANDREW_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class SubmissionError(ValueError):
    """The submission does not have the required shape; the message says what to fix."""


def files_to_zip(folder: Path) -> list[Path]:
    """Every file under `folder` that belongs in a submission, as paths relative to it."""
    chosen = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            path = Path(root, name)
            if not name.endswith(SKIPPED_SUFFIXES) and path.is_file() and not path.is_symlink():
                chosen.append(path.relative_to(folder))
    return chosen


def create_zip(folder: Path, andrew_id: str, variant: str, zip_path: Path) -> Path:
    """Zip `folder` as ANDREWID/... after checking that every required file is in it, then check
    the zip (check_zip). Nothing is left at zip_path unless the zip passes: it is written to a
    temporary file beside it, which replaces zip_path only then."""
    files = files_to_zip(folder)
    missing = REQUIRED_FILES[variant] - {path.as_posix() for path in files}
    if missing:
        raise SubmissionError(f"required file(s) missing in {folder}:\n  " + "\n  ".join(sorted(missing)))
    zip_path = zip_path.resolve()
    temporary = zip_path.with_name(f".{zip_path.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                if (folder / path).resolve() != zip_path:
                    archive.write(folder / path, f"{andrew_id}/{path.as_posix()}")
        check_zip(temporary, andrew_id, variant, shown_as=zip_path)
        os.replace(temporary, zip_path)
    finally:
        temporary.unlink(missing_ok=True)
    return zip_path


def largest_entries(infos: list[zipfile.ZipInfo], excess: int) -> list[str]:
    """The biggest entries (by compressed size) whose removal brings the zip `excess` bytes down."""
    named, removed = [], 0
    for info in sorted(infos, key=lambda info: info.compress_size, reverse=True):
        if removed >= excess:
            break
        named.append(f"{info.filename} ({info.compress_size / 2**20:.1f} MB)")
        removed += info.compress_size
    return named


def check_zip(zip_path: Path, andrew_id: str, variant: str, shown_as: Path | None = None) -> list[str]:
    """Raise SubmissionError naming every problem (with `shown_as` as the zip's name, default
    zip_path); return the files inside (without the folder)."""
    problems = []
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
    except zipfile.BadZipFile:
        raise SubmissionError(f"{shown_as or zip_path} is not a zip file") from None
    names = [info.filename for info in infos]
    size = zip_path.stat().st_size
    if size > MAX_ZIP_BYTES:
        problems.append(f"the zip is {size / 2**20:.1f} MB; the limit is {MAX_ZIP_BYTES / 2**20:.0f} MB "
                        "(leave checkpoints and data out); the largest files:\n  "
                        + "\n  ".join(largest_entries(infos, size - MAX_ZIP_BYTES)))

    # Upstream ignores entries starting with "_" (e.g. macOS's __MACOSX/ folder).
    names = [name for name in names if not name.startswith("_")]
    unsafe = [name for name in names if name.startswith(("/", "\\")) or ".." in Path(name).parts
              or re.match(r"[A-Za-z]:", name)]
    if unsafe:
        problems.append(f"absolute paths or '..' inside the zip: {unsafe[:5]}")
    top_level = sorted({name.split("/", 1)[0] for name in names})
    if len(top_level) != 1 or not all("/" in name for name in names):
        problems.append(f"the zip must hold exactly one top-level folder named after your Andrew ID; "
                        f"it has {top_level[:10]}")
    elif top_level[0] != andrew_id:
        problems.append(f"the top-level folder is {top_level[0]!r}, but the Andrew ID given is {andrew_id!r}")
    inside = {name.split("/", 1)[1] for name in names if "/" in name}
    missing = REQUIRED_FILES[variant] - inside
    if missing:
        problems.append("required file(s) missing:\n  " + "\n  ".join(sorted(missing)))
    if problems:
        raise SubmissionError(f"{shown_as or zip_path} is not a valid submission:\n- " + "\n- ".join(problems))
    return sorted(inside)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="your repository folder (to create the zip) or a zip (to check it)")
    parser.add_argument("andrew_id", help="your Andrew ID, which names the folder inside the zip")
    parser.add_argument("--variant", choices=list(REQUIRED_FILES), default=DEFAULT_VARIANT,
                        help=f"the course's file list (default: {DEFAULT_VARIANT})")
    parser.add_argument("--out", type=Path, default=None, help="where to write the zip (default: ./ANDREWID.zip)")
    args = parser.parse_args()
    andrew_id = args.andrew_id.strip()
    try:
        if not ANDREW_ID.fullmatch(andrew_id):
            raise SubmissionError(f"{andrew_id!r} does not look like an Andrew ID (letters and digits)")
        zip_path = args.path
        if args.path.is_dir():
            zip_path = create_zip(args.path, andrew_id, args.variant, args.out or Path(f"{andrew_id}.zip"))
            print(f"Submission zip created from {args.path} for {andrew_id}: {zip_path}")
        elif not args.path.is_file():
            raise SubmissionError(f"{args.path} is neither a folder nor a file")
        inside = check_zip(zip_path, andrew_id, args.variant)
    except SubmissionError as err:
        print(f"prepare_submit: {err}", file=sys.stderr)
        return 1
    advanced = ADVANCED_FILES & set(inside)
    if advanced and advanced != ADVANCED_FILES:
        print(f"warning: only some advanced outputs are there; missing {sorted(ADVANCED_FILES - advanced)}",
              file=sys.stderr)
    print(f"{zip_path} is a valid submission for Andrew ID {andrew_id} ({len(inside)} files, "
          f"{zip_path.stat().st_size / 2**20:.2f} MB):")
    for name in inside:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
