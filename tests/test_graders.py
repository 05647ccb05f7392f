"""The three grader scripts, run the way graders run them: as programs, in a copy of the
repository's top level. They must print their pass line with the real reference files,
fail (non-zero exit) on wrong results, and explain a missing file in one line, without a
traceback. stories42M.pt cannot be downloaded at test time, so sanity_check.py is checked
on a small random checkpoint whose reference outputs are made here, by the same code."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from testkit import find_asset
from config import LlamaConfig
from llama import Llama
from sanity_check import REFERENCES, compute_outputs
from utils import REPO_ROOT


@pytest.fixture
def reference(asset):
    """reference(name) -> Path of a grader reference file (skipped, or failed under CI, if absent)."""
    return lambda name: asset(name, f"reference/{name}")


@pytest.fixture
def checkout(tmp_path) -> Path:
    """The repository's top-level Python files and the support package, without any asset: a fresh clone."""
    for source in REPO_ROOT.glob("*.py"):
        shutil.copy(source, tmp_path)
    shutil.copytree(REPO_ROOT / "support", tmp_path / "support", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def run(folder: Path, script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=folder,
                          capture_output=True, text=True, timeout=300)


def assert_passed(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 0, result.stderr
    assert message in result.stdout


def assert_failed(result: subprocess.CompletedProcess, *expected_in_stderr: str) -> None:
    assert result.returncode != 0
    assert "passed" not in result.stdout and "correct" not in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for text in expected_in_stderr:
        assert text in result.stderr, result.stderr


# ----------------------------------------------------------------------------- rope_test.py

def test_rope_grader_passes(checkout, reference):
    shutil.copy(reference("rotary_embedding_actual.data"), checkout)
    assert_passed(run(checkout, "rope_test.py"), "Rotary embedding test passed!")


def test_rope_grader_fails_on_wrong_reference(checkout, reference):
    query, key = torch.load(reference("rotary_embedding_actual.data"), weights_only=True)
    torch.save((query, key.flip(-1)), checkout / "rotary_embedding_actual.data")
    assert_failed(run(checkout, "rope_test.py"), "FAILED for the key")


# ----------------------------------------------------------------------------- optimizer_test.py

def test_optimizer_grader_passes_both_variants(checkout, reference):
    for name in ("optimizer_test.npy", "optimizer_test_clip0.9.npy"):
        shutil.copy(reference(name), checkout)
    assert_passed(run(checkout, "optimizer_test.py"), "Optimizer test passed!")


def test_optimizer_grader_checks_one_variant_on_request(checkout, reference):
    shutil.copy(reference("optimizer_test.npy"), checkout)
    assert_passed(run(checkout, "optimizer_test.py", "--variant", "noclip"), "Optimizer test passed!")


def test_optimizer_grader_fails_on_swapped_references(checkout, reference):
    # Each reference under the other's name: the clipping must make the difference.
    shutil.copy(reference("optimizer_test.npy"), checkout / "optimizer_test_clip0.9.npy")
    shutil.copy(reference("optimizer_test_clip0.9.npy"), checkout / "optimizer_test.npy")
    assert_failed(run(checkout, "optimizer_test.py"), "FAILED (noclip", "FAILED (clip0.9")


# ----------------------------------------------------------------------------- missing files

@pytest.mark.parametrize("script, args, missing", [
    ("rope_test.py", [], ["rotary_embedding_actual.data"]),
    ("optimizer_test.py", [], ["optimizer_test.npy", "optimizer_test_clip0.9.npy"]),
    ("optimizer_test.py", ["--variant", "clip0.9"], ["optimizer_test_clip0.9.npy"]),
    ("sanity_check.py", [], ["stories42M.pt", "https://www.cs.cmu.edu/~vijayv/stories42M.pt"]),
    ("sanity_check.py", ["--checkpoint", "other.pt"], ["other.pt"]),
])
def test_missing_file_is_explained_in_one_line(checkout, script, args, missing):
    result = run(checkout, script, *args)
    assert_failed(result, "setup.sh", *missing)
    assert all(line.startswith("missing file: ") for line in result.stderr.strip().splitlines())


# ----------------------------------------------------------------------------- sanity_check.py

TINY = dict(vocab_size=18000, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)


def save_checkpoint(model: Llama, path: Path) -> None:
    """The layout of stories42M.pt: llama2.c's `model_args` and the `model` state dict."""
    model_args = dict(TINY, multiple_of=32, hidden_dim=None, norm_eps=1e-5, dropout=0.0)
    torch.save({"model_args": model_args, "model": model.state_dict()}, path)


@pytest.fixture
def tiny_checkout(checkout) -> Path:
    """A checkout with a small random stories42M.pt and references made from it."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**TINY))
    with torch.no_grad():  # random norm weights, so that the two norms disagree more
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
    save_checkpoint(model, checkout / "stories42M.pt")
    for norm, filename in REFERENCES.items():
        torch.save(compute_outputs(checkout / "stories42M.pt", norm), checkout / filename)
    return checkout


def test_reference_layout_matches_upstream(tiny_checkout, reference):
    """The references we make hold what upstream's do: last-position logits and all hidden states."""
    ours = torch.load(tiny_checkout / REFERENCES["rmsnorm"], weights_only=True)
    assert ours["logits"].shape == (2, 1, TINY["vocab_size"])
    assert ours["hidden_states"].shape == (2, 8, TINY["dim"])
    upstream = torch.load(reference(REFERENCES["rmsnorm"]), weights_only=True)
    assert set(ours) == set(upstream)
    assert upstream["logits"].shape[:2] == (2, 1) and upstream["hidden_states"].shape[:2] == (2, 8)


def test_sanity_check_passes(tiny_checkout):
    for args in ([], ["--norm", "layernorm"]):
        assert_passed(run(tiny_checkout, "sanity_check.py", *args), "Your Llama implementation is correct!")


def test_sanity_check_flags(tiny_checkout, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (tiny_checkout / "stories42M.pt").rename(elsewhere / "model.pt")
    (tiny_checkout / REFERENCES["layernorm"]).rename(elsewhere / "outputs.data")
    assert_passed(run(tiny_checkout, "sanity_check.py", "--norm", "layernorm", "--checkpoint", elsewhere / "model.pt",
                      "--reference", elsewhere / "outputs.data"), "Your Llama implementation is correct!")


def test_sanity_check_fails_on_perturbed_weights(tiny_checkout):
    checkpoint = torch.load(tiny_checkout / "stories42M.pt", weights_only=True)
    checkpoint["model"]["layers.1.feed_forward.w2.weight"] += 1e-3
    torch.save(checkpoint, tiny_checkout / "stories42M.pt")
    assert_failed(run(tiny_checkout, "sanity_check.py"), "hidden_states differ", "FAILED")


def test_sanity_check_says_a_small_vocabulary_cannot_take_its_input(tiny_checkout):
    """stories260K.bin has 512 tokens; the sanity batch uses ids up to 17953."""
    torch.manual_seed(0)
    small, args = tiny_checkout / "small.pt", dict(TINY, vocab_size=512)
    torch.save({"model_args": args, "model": Llama(LlamaConfig(**args)).state_dict()}, small)
    assert_failed(run(tiny_checkout, "sanity_check.py", "--checkpoint", small),
                  "vocabulary of 512 tokens", "up to 17953", "stories42M.pt")


def test_sanity_check_fails_with_the_other_norm(tiny_checkout):
    result = run(tiny_checkout, "sanity_check.py", "--norm", "layernorm", "--reference", REFERENCES["rmsnorm"])
    assert_failed(result, "FAILED (norm layernorm")


def test_sanity_check_names_a_missing_reference(tiny_checkout):
    (tiny_checkout / REFERENCES["layernorm"]).unlink()
    assert_failed(run(tiny_checkout, "sanity_check.py", "--norm", "layernorm"), REFERENCES["layernorm"], "setup.sh")


@pytest.mark.parametrize("norm", list(REFERENCES))
def test_sanity_check_with_stories42M(checkout, reference, norm):
    """The real grader check, where stories42M.pt is at hand (an optional asset: it cannot
    always be downloaded, so its absence is a skip even under CI)."""
    stories42m = find_asset("stories42M.pt", "models/stories42M.pt")
    if stories42m is None:
        pytest.skip("stories42M.pt not found: run `bash setup.sh` where it can be downloaded")
    os.symlink(stories42m, checkout / "stories42M.pt")
    shutil.copy(reference(REFERENCES[norm]), checkout)
    assert_passed(run(checkout, "sanity_check.py", "--norm", norm), "Your Llama implementation is correct!")
