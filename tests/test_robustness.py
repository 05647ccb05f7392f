"""Real faults, not mocks of them: a signal sent to a running training process, writes that the
kernel refuses (a file-size limit, /dev/full), truncated checkpoints, two runs in one folder, a
resume that changes the run, flags that would be ignored, and the small things users hit."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import run_llama
from utils import REPO_ROOT

TINY = ["--tokenizer", "char", "--dim", "32", "--n_layers", "2", "--n_heads", "4", "--max_seq_len", "16",
        "--batch_size", "8", "--eval_batches", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "fox.txt"
    path.write_text("".join(f"the quick brown fox {i % 7} jumps over the lazy dog {i % 5}.\n" for i in range(300)),
                    encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("MINLLAMA_CACHE", str(tmp_path / "cache"))


def pretrain_args(corpus, out_dir, *extra) -> list[str]:
    return ["--option", "pretrain", "--corpus", str(corpus), *TINY, "--out_dir", str(out_dir), *map(str, extra)]


def pretrain(corpus, out_dir, *extra) -> int:
    return run_llama.main(pretrain_args(corpus, out_dir, *extra))


def logged_steps(out_dir: Path) -> list[int]:
    metrics = out_dir / "metrics.jsonl"
    if not metrics.is_file():
        return []
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line]


def start_child(args, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "run_llama.py"), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for_step(child: subprocess.Popen, out_dir: Path, step: int) -> None:
    deadline = time.monotonic() + 120
    while not any(s >= step for s in logged_steps(out_dir)):
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child never reached the step"
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------
# 1. SIGTERM is Ctrl-C: the step finishes, last.pt is saved, the message says how to go on


@pytest.mark.slow
def test_sigterm_mid_run_saves_last_pt_and_says_how_to_resume(tmp_path, corpus):
    out = tmp_path / "run"
    child = start_child(pretrain_args(corpus, out, "--max_steps", 100000, "--eval_every", 100000))
    wait_for_step(child, out, 3)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    assert "Traceback" not in err and "--resume" in err
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["step"] == max(logged_steps(out)) >= 3  # the last finished step, not an evaluation's
    assert f"interrupted after step {saved['step']}: saved" in err
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_processes_after_the_same_step_and_saves(tmp_path, corpus):
    """torchrun forwards SIGTERM to its workers and waits for them: the run saves as one process would."""
    out = tmp_path / "run"
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
              str(REPO_ROOT / "run_llama.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, *launch, *pretrain_args(corpus, out, "--max_steps", 100000,
                                                                      "--eval_every", 100000)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(child, out, 3)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["step"] == max(logged_steps(out)) >= 3
    assert f"interrupted after step {saved['step']}: saved" in err and "--resume" in err


# ----------------------------------------------------------------------------------------------
# 4. Every checkpoint is read through the one path that names a damaged file


def truncated_copy(path: Path, to: Path) -> Path:
    data = path.read_bytes()
    to.write_bytes(data[:len(data) * 2 // 3])
    return to


def test_resume_from_a_truncated_last_pt_says_so(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert pretrain(corpus, out, "--max_steps", 2) == 0
    truncated_copy(out / "last.pt", out / "last.pt")
    assert pretrain(corpus, out, "--max_steps", 2, "--resume") == 1
    err = capsys.readouterr().err
    assert f"{out / 'last.pt'}: cannot read it as a PyTorch checkpoint (truncated or corrupt?)" in err


def test_checkpoint_in_a_truncated_lora_checkpoint_says_so(tmp_path, data, tiny_model, tokenizer_model_path, capsys):
    from testkit import sst_args

    damaged = truncated_copy(Path(__file__).parent / "data" / "lora-checkpoint-with-flags.pt", tmp_path / "lora.pt")
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "lora", "--checkpoint_in", str(damaged),
                    "--skip_test", "--out_dir", str(tmp_path))
    assert run_llama.main(args) == 1
    err = capsys.readouterr().err
    assert f"{damaged}: cannot read it as a PyTorch checkpoint (truncated or corrupt?)" in err
    assert "Traceback" not in err
