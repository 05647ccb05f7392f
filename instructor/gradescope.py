"""Build Gradescope's autograder: `python instructor/gradescope.py --variant rmsnorm|layernorm --out autograder.zip`.

Gradescope takes a zip with `setup.sh` and `run_autograder` at its root. It unpacks the zip into
/autograder/source, runs setup.sh there once (as root) to build the image, and for every submission
runs run_autograder, which must write /autograder/results/results.json. This zip holds:

    setup.sh, run_autograder    installing the pinned CPU build of torch (and requirements.txt) into
                                /autograder/venv, and bubblewrap; grading one submission
    instructor/, the solution   grade.py and its parts, and the solution modules the checks and the
                                course's support files need (the course's import closure), listed in
                                solution-files.txt (the autograder is no git checkout)
    references/, data/          the course's grader reference files and the gold labels
    model/                      the sanity check's checkpoint: --checkpoint (stories42M.pt, whose upstream
                                reference applies) or, without it, a small random model built here, on
                                which the sanity check compares with the solution
    autograder.json             the variant, the checkpoint and what it means, the limits per check

run_autograder runs gradescope_results.py, which grades with grade.py and writes results.json; every
report says which checkpoint the sanity check ran on, and in which sandbox.
"""

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path

import torch

INSTRUCTOR_DIR = Path(__file__).resolve().parent
REPO_ROOT = INSTRUCTOR_DIR.parent
sys.path[:0] = [str(REPO_ROOT), str(INSTRUCTOR_DIR)]
from config import LlamaConfig  # noqa: E402
from grade import HARNESS_FILES, find_data_dir, solution_files  # noqa: E402
from llama import Llama  # noqa: E402
from make_skeleton import find_assets  # noqa: E402
from shipping import closure, imported_files  # noqa: E402
from support.course import COURSES  # noqa: E402

ENTRY = "instructor/gradescope_results.py"  # what run_autograder runs
GOLD_FILES = ("sst-dev.txt", "sst-test.txt", "cfimdb-dev.txt", "cfimdb-test.txt")
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"

SETUP = """#!/usr/bin/env bash
# Gradescope runs this once, as root in /autograder/source, when it builds the autograder's image.
set -euo pipefail
apt-get install -y --no-install-recommends bubblewrap util-linux python3 python3-venv
# The account the checks run as where bubblewrap cannot start (sandbox.py's container mode).
id minllama-student >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin minllama-student
python3 -m venv /autograder/venv
# The pinned torch, as the CPU build: the grading machines have no GPU, and the CUDA build is GBs.
/autograder/venv/bin/pip install --index-url {index} "{torch}"
/autograder/venv/bin/pip install -r /autograder/source/requirements.txt
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission: grade $AUTOGRADER_ROOT/submission (default /autograder)
# and write $AUTOGRADER_ROOT/results/results.json.
ROOT="${AUTOGRADER_ROOT:-/autograder}"
PYTHON="$ROOT/venv/bin/python"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" "$ROOT/source/instructor/gradescope_results.py" "$ROOT"
"""


def grader_files(files: set[str]) -> list[str]:
    """The files gradescope_results.py reaches: the instructor modules (imported by bare name, with
    instructor/ on sys.path) and the solution modules they import."""
    instructor = {path.removeprefix("instructor/") for path in files if path.startswith("instructor/")}
    found, queue = [], [ENTRY]
    while queue:
        path = queue.pop(0)
        if path in found:
            continue
        found.append(path)
        text = (REPO_ROOT / path).read_text()
        queue += imported_files(text, path, files)
        if path.startswith("instructor/"):
            queue += [f"instructor/{name}" for name in imported_files(text, path, instructor)]
    return found


def small_checkpoint() -> bytes:
    """A random Llama (seed 0) with Llama 2's vocabulary, so the upstream sanity batch fits it."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)
    buffer = io.BytesIO()
    torch.save({"model_args": config.to_dict(), "model": Llama(config).state_dict()}, buffer)
    return buffer.getvalue()


def torch_requirement() -> str:
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    return next(line.split("#")[0].strip() for line in lines if line.startswith("torch=="))


def build(variant: str, out: Path, checkpoint: Path | None, timeout_s: int, references: Path, data: Path) -> str:
    """Write the zip; returns what the sanity check will run on, in words."""
    course = COURSES[variant]
    files = solution_files()
    harness = {str(path.relative_to(REPO_ROOT)) for path in HARNESS_FILES}  # run by the checks, not imported
    shipped = sorted(set(closure(course, lambda path: (REPO_ROOT / path).read_text(), files)) | set(grader_files(files))
                     | harness | {"requirements.txt"})
    if checkpoint is None:
        model_name, model = "small-random.pt", small_checkpoint()
        sanity = ("a small random model built by gradescope.py (dim 64, 2 layers), on which the sanity check "
                  "compares with the solution: no upstream reference applies to it")
    else:
        model_name, model = checkpoint.name, checkpoint.read_bytes()
        sanity = (f"{checkpoint.name}, against the upstream reference" if checkpoint.name == "stories42M.pt"
                  else f"{checkpoint.name}, on which the sanity check compares with the solution")
    config = {"variant": variant, "checkpoint": f"model/{model_name}", "sanity_check_runs_on": sanity,
              "timeout_s": timeout_s}
    temporary = out.with_name(f".{out.name}.partial")
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in (("setup.sh", SETUP.format(index=CPU_TORCH_INDEX, torch=torch_requirement())),
                           ("run_autograder", RUN_AUTOGRADER)):
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o100755 << 16  # executable, as Gradescope needs
            archive.writestr(info, text)
        for path in shipped:
            archive.write(REPO_ROOT / path, path)
        archive.writestr("solution-files.txt", "\n".join(shipped) + "\n")
        for upstream, explicit in course.references:
            archive.write(references / explicit, f"references/{explicit}")
        for name in GOLD_FILES:
            archive.write(data / name, f"data/{name}")
        archive.writestr(f"model/{model_name}", model)
        if (REPO_ROOT / "tokenizer.model").is_file() and model_name == "stories42M.pt":  # perplexities
            archive.write(REPO_ROOT / "tokenizer.model", "tokenizer.model")
        archive.writestr("autograder.json", json.dumps(config, indent=2))
    temporary.replace(out)
    return sanity


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=list(COURSES), required=True, help="the course the autograder grades")
    parser.add_argument("--out", type=Path, required=True, help="the zip to write (e.g. autograder.zip)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the sanity check's model (stories42M.pt where you have it; default: a small random "
                             "model built here, compared with the solution)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per check (default: 300)")
    args = parser.parse_args(argv)
    references, data = find_assets(), find_data_dir()
    if references is None or data is None:
        print("gradescope: the grader reference files or the gold data are not found (run setup.sh)", file=sys.stderr)
        return 1
    if args.checkpoint is not None and not args.checkpoint.is_file():
        print(f"gradescope: --checkpoint {args.checkpoint} not found", file=sys.stderr)
        return 1
    if not args.out.parent.is_dir():
        print(f"gradescope: --out {args.out}: the folder {args.out.parent} does not exist", file=sys.stderr)
        return 1
    sanity = build(args.variant, args.out, args.checkpoint, args.timeout, references, data)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MB) for the {args.variant} course; "
          f"the sanity check runs on {sanity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
