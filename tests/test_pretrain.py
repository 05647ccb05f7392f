"""--option pretrain end to end: what it writes, that its checkpoints serve every other option,
exact resumption after Ctrl-C, two gloo processes under torchrun equal one, and every bad input."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run_llama
from llama import load_pretrained
from minllama.pretraining import pretraining
from tokenizer import Tokenizer, tokenizer_for_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dim", "32", "--n_layers", "2", "--n_heads", "4", "--max_seq_len", "16", "--batch_size", "8",
        "--eval_batches", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "fox.txt"
    lines = [f"the quick brown fox {i % 7} jumps over the lazy dog number {i % 5}.\n" for i in range(300)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINLLAMA_CACHE", str(tmp_path / "cache"))


def pretrain(corpus, out_dir, *extra, tokenizer=("--tokenizer", "char")) -> int:
    return run_llama.main(["--option", "pretrain", "--corpus", str(corpus), *map(str, tokenizer), *TINY,
                           "--out_dir", str(out_dir), *map(str, extra)])


def losses(out_dir) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


@pytest.mark.slow
def test_pretrain_from_scratch_writes_everything_and_learns(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert pretrain(corpus, out, "--max_steps", 60, "--lr", 3e-3, "--warmup_steps", 5, "--eval_every", 30) == 0
    printed = capsys.readouterr().out
    assert "step 30: val loss" in printed and "bits/char" in printed and "sample: " in printed
    assert {p.name for p in out.iterdir()} == {"best.pt", "last.pt", "metrics.jsonl", "loss.png", "summary.json",
                                              "char_tokenizer.json"}
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["tokens_seen"] == 60 * 8 * 16
    assert summary["best_val_loss"] < 2.0 < summary["settings"]["max_steps"]  # from ln(37) = 3.6 at the start
    for key in ("best_step", "wall_seconds", "tokens_per_second", "peak_memory_mb"):
        assert summary[key] > 0
    evaluations = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in l]
    assert [e["step"] for e in evaluations] == [30, 60]
    assert all(e["val_bits_per_char"] == pytest.approx(e["val_loss"] / 0.6931471805599453, rel=0.1) for e in evaluations)

    # The checkpoint is a plain model with its tokenizer: load_pretrained and every option read it.
    model = load_pretrained(out / "best.pt")
    tokenizer = tokenizer_for_checkpoint(out / "best.pt")
    assert tokenizer.kind == "char" and model.config.vocab_size == tokenizer.n_words
    last = torch.load(out / "last.pt", weights_only=True)
    assert {"optimizer", "loop_state", "rng_state"} <= set(last) and last["step"] == 60
    assert run_llama.main(["--option", "generate", "--pretrained-model-path", str(out / "best.pt"),
                           "--out_dir", str(tmp_path / "gen")]) == 0
    assert "have wanted to see" in (tmp_path / "gen" / "generated-sentence-temp-0.txt").read_text()  # "I": not in the vocabulary


def test_ctrl_c_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, corpus, monkeypatch, capsys):
    flags = ["--max_steps", 12, "--lr", 3e-3, "--eval_every", 5, "--dropout", 0.1, "--warmup_steps", 2]
    assert pretrain(corpus, tmp_path / "whole", *flags) == 0

    windows, calls = pretraining.windows_at, []

    def interrupt_at_step_7(*args):
        calls.append(1)
        if len(calls) == 8:  # during step 7 (the 8th batch): Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return windows(*args)

    monkeypatch.setattr(pretraining, "windows_at", interrupt_at_step_7)
    assert pretrain(corpus, tmp_path / "cut", *flags) == 130
    err = capsys.readouterr().err
    assert "interrupted after step 8: saved" in err and "--resume" in err and "Traceback" not in err
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 8
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.startswith(".")]  # no temporary files
    monkeypatch.setattr(pretraining, "windows_at", windows)
    assert pretrain(corpus, tmp_path / "cut", *flags, "--resume") == 0

    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for name, tensor in whole["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=0)
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")  # metrics.jsonl reads as one run


@pytest.mark.slow
def test_two_gloo_processes_follow_the_loss_curve_of_one(tmp_path, corpus):
    """torchrun --nproc_per_node 2: --batch_size is the global batch, each rank a shard, DDP averages;
    with --grad_accum 2 the all-reduce is skipped on the first micro-step. Same losses as one process."""
    common = ["--option", "pretrain", "--corpus", corpus, "--tokenizer", "char", *TINY, "--max_steps", 6,
              "--lr", 3e-3, "--eval_every", 3]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MINLLAMA_CACHE": str(tmp_path / "cache")}
    common = [str(a) for a in common]
    single = subprocess.run([sys.executable, REPO_ROOT / "run_llama.py", *common, "--out_dir", tmp_path / "one"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    double = subprocess.run([*launch, REPO_ROOT / "run_llama.py", *common, "--grad_accum", "2",
                             "--out_dir", tmp_path / "two"], capture_output=True, text=True, env=env, timeout=600)
    assert double.returncode == 0, double.stderr
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _ in one] == [s for s, _ in two] == list(range(1, 7))
    assert [l for _, l in two] == pytest.approx([l for _, l in one], rel=1e-5)
    assert double.stdout.count("step 3: val loss") == 1  # only rank 0 prints


@pytest.mark.slow
def test_trained_tokenizer_and_continued_pretraining_on_training_sentences(tmp_path, corpus, asset):
    assert pretrain(corpus, tmp_path / "bpe", "--max_steps", 4, tokenizer=("--train_tokenizer", 320)) == 0
    trained = Tokenizer(tokenizer_model=tmp_path / "bpe" / "tokenizer.model")
    assert trained.n_words == 320 and tokenizer_for_checkpoint(tmp_path / "bpe" / "best.pt").n_words == 320

    # Continue pre-training that model on the sentences of a labelled file, then fine-tune from it.
    sentences = tmp_path / "sst-train.txt"
    sentences.write_text("".join(f"{i % 5} ||| the fox {i} jumps over the dog .\n" for i in range(60)), encoding="utf-8")
    assert run_llama.main(["--option", "pretrain", "--train", str(sentences), "--pretrained-model-path",
                           str(tmp_path / "bpe" / "best.pt"), "--max_seq_len", "16", "--batch_size", "4",
                           "--max_steps", "3", "--eval_batches", "1", "--out_dir", str(tmp_path / "adapted")]) == 0
    adapted = torch.load(tmp_path / "adapted" / "best.pt", weights_only=True)
    assert adapted["model_args"]["vocab_size"] == 320 and adapted["tokenizer"]["kind"] == "sentencepiece"
    (tmp_path / "sst-dev.txt").write_text("1 ||| the fox .\n3 ||| the dog .\n", encoding="utf-8")
    (tmp_path / "sst-label-mapping.json").write_text(json.dumps(["a", "b", "c", "d", "e"]))
    assert run_llama.main(["--option", "finetune", "--train", str(sentences), "--dev", str(tmp_path / "sst-dev.txt"),
                           "--skip_test", "--epochs", "1", "--pretrained-model-path", str(tmp_path / "adapted" / "best.pt"),
                           "--out_dir", str(tmp_path / "tuned")]) == 0
    assert len((tmp_path / "tuned" / "sst-dev-finetuning-output.txt").read_text().splitlines()) == 2


# ----------------------------------------------------------------------------------------------
# Bad input: one clear message, before any training, nothing lost


def expect_error(capsys, code, message):
    captured = capsys.readouterr()
    assert code == 1, captured
    assert message in captured.err and "Traceback" not in captured.err, captured.err


def test_bad_corpora(tmp_path, corpus, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    expect_error(capsys, pretrain(empty, tmp_path / "o", "--max_steps", 2), f"{empty}: the corpus is empty")
    short = tmp_path / "short.txt"
    short.write_text("a few words only, a few words only, a few words", encoding="utf-8")
    expect_error(capsys, pretrain(short, tmp_path / "o", "--max_steps", 2),
                 "fewer than one window of --max_seq_len 16 plus one target token")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"caf\xe9 au lait\n" * 50)
    expect_error(capsys, pretrain(latin1, tmp_path / "o", "--max_steps", 2), "byte 3 (line 1) is b'\\xe9', which is not UTF-8")
    expect_error(capsys, pretrain(corpus, tmp_path / "o", "--max_steps", 2, tokenizer=("--train_tokenizer", 50000)),
                 "--train_tokenizer 50000: SentencePiece cannot train that vocabulary")
    expect_error(capsys, pretrain(tmp_path / "nowhere.txt", tmp_path / "o", "--max_steps", 2), "corpus not found")


def test_resume_from_another_architecture_or_tokenizer(tmp_path, corpus, capsys):
    assert pretrain(corpus, tmp_path / "run", "--max_steps", 2) == 0
    capsys.readouterr()
    code = run_llama.main(["--option", "pretrain", "--corpus", str(corpus), "--tokenizer", "char", "--dim", "64",
                           "--n_layers", "2", "--n_heads", "4", "--max_seq_len", "16", "--max_steps", "4",
                           "--out_dir", str(tmp_path / "run"), "--resume", "--allow_changed", "max_steps"])
    expect_error(capsys, code, "is a model with dim=32")
    code = pretrain(corpus, tmp_path / "run", "--max_steps", 4, "--resume", "--allow_changed", "max_steps",
                    tokenizer=())
    expect_error(capsys, code, "was trained with another tokenizer (char, 40 tokens) than this command's (sentencepiece, 32000")
    expect_error(capsys, pretrain(corpus, tmp_path / "fresh", "--max_steps", 4, "--resume"), "last.pt not found")


@pytest.mark.parametrize("flags, message", [
    (["--preset", "stories1B"], "--preset stories1B does not exist: choose one of stories260K, stories15M"),
    ([], "--option pretrain counts optimizer steps: give --max_steps"),
    (["--max_steps", "0"], "--max_steps must be positive, got 0"),
])
def test_bad_pretraining_flags_stop_the_parser(tmp_path, corpus, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run_llama.main(["--option", "pretrain", "--corpus", str(corpus), *flags, "--out_dir", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--n_heads", "3"], "the model flags do not make a Llama: dim 32 is not divisible by n_heads 3"),
    (["--batch_size", "6", "--grad_accum", "4"], "--batch_size 6 does not split into --grad_accum 4"),
])
def test_bad_model_or_batch_flags_are_found_before_training(tmp_path, corpus, capsys, flags, message):
    expect_error(capsys, pretrain(corpus, tmp_path, "--max_steps", 5, *flags), message)
    assert not (tmp_path / "last.pt").exists()
