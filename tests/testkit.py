"""Where the tests find their assets, and how a missing one is reported (skipped on a laptop,
a failure under CI); the plain helpers that more than one test module uses (run_llama.py's
command line on the data slices of conftest's `data`, and the tiny random models and reference
loops of the generation tests). A module of its own rather than conftest.py, so that test modules
can import it by a name no other conftest.py (tests/student has one) can shadow. No test module
imports another: what two share lives here (helpers) or in conftest.py (fixtures)."""

import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from config import LlamaConfig
from llama import Llama
from support.course import GENERATION_FILES
from utils import REPO_ROOT


def asset_dirs() -> list[Path]:
    """Mirror folders (laid out like shared/assets), in the order they are searched."""
    dirs = [Path(os.environ["MINLLAMA_ASSETS"])] if os.environ.get("MINLLAMA_ASSETS") else []
    return dirs + [REPO_ROOT.parent / "shared" / "assets"]


def find_asset(repo_path: str, mirror_path: str | None = None) -> Path | None:
    """`repo_path` as setup.sh lays it out in the repository root, else `mirror_path` (default:
    the same) in a mirror; None if it is nowhere."""
    candidates = [REPO_ROOT / repo_path] + [d / (mirror_path or repo_path) for d in asset_dirs()]
    return next((path for path in candidates if path.exists()), None)


def skip_or_fail(reason: str):
    """Skip locally; fail under CI, where every asset must be present."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason, allow_module_level=True)  # also from a test module's imports


def require_module(name: str):
    """Import a test-only dependency (e.g. transformers, from requirements-dev.txt), skipping the
    test without it locally and failing under CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        skip_or_fail(f"{name} is not installed: bash setup.sh --dev")


# ----------------------------------------------------------------------------------------------
# run_llama.py's command line (tests/test_run_llama.py, test_methods_cli.py, test_instruct_tuning.py)


def sst_args(data, model, tokenizer_model_path, *extra) -> list[str]:
    """run_llama.py's arguments for the SST slices in `data` (conftest's fixture), then `extra`."""
    return ["--train", str(data / "sst-train.txt"), "--dev", str(data / "sst-dev.txt"),
            "--test", str(data / "sst-test.txt"), "--label-names", str(data / "sst-label-mapping.json"),
            "--pretrained-model-path", str(model), "--tokenizer", str(tokenizer_model_path), *extra]


def run_cli(args, cwd) -> subprocess.CompletedProcess:
    """run_llama.py ARGS as a command, in `cwd`; whatever its exit status, never a traceback."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "run_llama.py"), *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def check_predictions(path, data_path, num_labels):
    """One `PRED ||| SENTENCE` line per input, in input order, sentences as in the data."""
    predicted = Path(path).read_text(encoding="utf-8").splitlines()
    original = Path(data_path).read_text(encoding="utf-8").splitlines()
    assert len(predicted) == len(original)
    for line, source in zip(predicted, original):
        label, sentence = line.split(" ||| ")
        assert int(label) in range(num_labels)
        assert sentence == source.split(" ||| ", 1)[1].strip()


# ----------------------------------------------------------------------------------------------
# Generation (tests/test_generate.py, test_fast_decode.py): tiny random models, CPU

GENERATION_CONFIG = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=24, hidden_dim=48)


def tiny_llama(**overrides) -> Llama:
    """A random Llama of GENERATION_CONFIG in eval mode with large weights (std 0.3): its greedy
    continuations vary from token to token instead of repeating one token, as the 0.02 init does."""
    model = Llama(LlamaConfig(**{**GENERATION_CONFIG, **overrides})).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    return model


def random_tokens(*shape: int) -> torch.Tensor:
    """Random ids from 1 to GENERATION_CONFIG's vocab_size - 1 (0 is what left_pad pads with)."""
    return torch.randint(1, GENERATION_CONFIG["vocab_size"], shape)


def manual_greedy(model: Llama, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The reference loop: a full forward over the last max_seq_len tokens, then argmax."""
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -model.config.max_seq_len:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def left_pad(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as one batch, padded with 0 on the left, and its attention mask."""
    length = max(len(p) for p in prompts)
    idx = torch.stack([F.pad(p, (length - len(p), 0)) for p in prompts])
    mask = torch.stack([F.pad(torch.ones_like(p), (length - len(p), 0)) for p in prompts])
    return idx, mask


# ----------------------------------------------------------------------------------------------
# Submissions for the autograder (tests/test_grade.py, test_gradescope.py)

ANDREW_ID = "student1"


def solution_code() -> dict[str, str]:
    """The solution's top-level Python files: a submission that implements everything."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return {path: (REPO_ROOT / path).read_text() for path in files
            if "/" not in path and path.endswith(".py") and (REPO_ROOT / path).is_file()}


def write_submission(folder: Path, data_dir: Path, predict, code_overrides=None, extra_files=()) -> Path:
    """A submission folder ANDREW_ID/ with code (the solution's, with `code_overrides`; an override
    None leaves that file out), predictions (predict(gold_label, n_labels)), generations and
    `extra_files` copied in."""
    root = folder / ANDREW_ID
    root.mkdir(parents=True)
    for name, text in {**solution_code(), **(code_overrides or {})}.items():
        if text is not None:  # None: the submission leaves the file out
            (root / name).write_text(text)
    for path in extra_files:
        shutil.copy2(path, root / path.name)
    for dataset, n_labels in (("sst", 5), ("cfimdb", 2)):
        for split in ("dev", "test"):
            gold = [[part.strip() for part in line.split("|||", 1)]
                    for line in (data_dir / f"{dataset}-{split}.txt").read_text().splitlines() if line.strip()]
            for run in ("prompting", "finetuning", "lora"):
                lines = [f"{predict(label, n_labels)} ||| {sentence}" for label, sentence in gold]
                (root / f"{dataset}-{split}-{run}-output.txt").write_text("\n".join(lines) + "\n")
    for name in GENERATION_FILES:
        (root / name).write_text("Once upon a time, there was a little girl named Lily. She loved to play.")
    return root


def zip_folder(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder).as_posix())
    return zip_path
