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
def test_sigterm_during_fine_tuning_keeps_the_best_checkpoint_and_says_so(tmp_path, data, tiny_model,
                                                                         tokenizer_model_path, monkeypatch, capsys):
    """Every training option runs the one loop: SIGTERM (sent to this process, mid-step) is Ctrl-C there too."""
    from minllama.classify import classification
    from testkit import sst_args

    collate, calls = classification.collate, []

    def sigterm_in_step_8(*args):
        calls.append(1)
        if len(calls) == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        return collate(*args)

    def unhandled(signum, frame):  # without the loop's own handler the signal would end pytest itself
        raise AssertionError("SIGTERM reached the default handler: the training loop does not handle it")

    monkeypatch.setattr(classification, "collate", sigterm_in_step_8)
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "finetune", "--epochs", "3", "--eval_every",
                    "5", "--skip_test", "--out_dir", str(tmp_path))
    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        assert run_llama.main(args) == 143
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert "interrupted at step 8: the best checkpoint so far" in err and "is kept" in err
    assert torch.load(tmp_path / "finetune-3-2e-05.pt", weights_only=True)["step"] == 5


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


# ----------------------------------------------------------------------------------------------
# 2. A full disk: one line naming the file and the size it needed; what was written before is kept.
# The faults are the kernel's own: writes to /dev/full fail with ENOSPC (the temporary file a write
# goes through is made a link to it), and past `ulimit -f` with EFBIG (in a child process).


def full_device_at(path: Path) -> Path:
    """Make the next atomic write of `path` by this process land on /dev/full."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.parent.mkdir(parents=True, exist_ok=True)
    temporary.symlink_to("/dev/full")
    return temporary


def test_a_full_disk_during_pretraining_names_the_file_and_keeps_best_pt(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    full_device_at(out / "last.pt")
    assert pretrain(corpus, out, "--max_steps", 2, "--eval_every", 1) == 1
    err = capsys.readouterr().err
    assert f"error: no space left on the device writing {out / 'last.pt'} (0.3 MB needed); {out / 'best.pt'} kept" \
        in err, err
    torch.load(out / "best.pt", weights_only=True)  # whole
    assert not (out / "last.pt").exists() and not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("writer", ["text", "checkpoint", "metrics"])
def test_every_writer_reports_a_full_disk_in_one_line(tmp_path, writer):
    from minllama.training.run_log import MetricsLog
    from utils import NoSpaceError, save_atomically, write_atomically

    path = tmp_path / "out.file"
    path.write_text("the earlier file")
    if writer == "metrics":
        log = MetricsLog(tmp_path)
        log.path.unlink()
        log.path.symlink_to("/dev/full")
    else:
        full_device_at(path)
    with pytest.raises(NoSpaceError) as raised:
        {"text": lambda: write_atomically(path, "x" * 2_000_000),
         "checkpoint": lambda: save_atomically({"w": torch.zeros(500_000)}, path),
         "metrics": lambda: log.write({"step": 1, "loss": 2.0})}[writer]()
    target = log.path if writer == "metrics" else path
    assert str(raised.value).startswith(f"no space left on the device writing {target} (")
    if writer != "metrics":
        assert "(2.0 MB needed)" in str(raised.value) and path.read_text() == "the earlier file"


@pytest.mark.slow
def test_a_file_size_limit_in_a_child_process_is_reported_and_best_pt_kept(tmp_path, corpus):
    """`ulimit -f`: the kernel refuses to grow a file past 200 KB (EFBIG): best.pt (0.1 MB) fits,
    last.pt with the optimizer's state (0.3 MB) does not."""
    import resource

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel's SIGXFSZ kills the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "run"
    child = start_child(pretrain_args(corpus, out, "--max_steps", 2, "--eval_every", 1), preexec_fn=limit_file_size)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 1, err
    assert f"error: the file size limit (ulimit -f) was reached writing {out / 'last.pt'} (0.3 MB needed); " \
           f"{out / 'best.pt'} kept" in err and "Traceback" not in err
    torch.load(out / "best.pt", weights_only=True)


# ----------------------------------------------------------------------------------------------
# 5. A resume continues the same run: changes are refused by flag unless --allow_changed names them


def test_resume_refuses_changed_settings_unless_allowed_and_says_where_it_stands(tmp_path, corpus, capsys):
    out, flags = tmp_path / "run", ["--max_steps", 4, "--eval_every", 2, "--lr", 1e-3]
    assert pretrain(corpus, out, *flags) == 0
    same_characters = tmp_path / "other.txt"  # the same characters (the same char vocabulary), another text
    same_characters.write_text("".join(reversed(corpus.read_text().splitlines(keepends=True))), encoding="utf-8")
    capsys.readouterr()

    assert pretrain(corpus, out, *flags, "--resume", "--lr", 5e-3) == 1
    err = capsys.readouterr().err
    assert "--lr was 0.001, this command says 0.005" in err and "--allow_changed lr" in err
    assert pretrain(same_characters, out, *flags, "--resume") == 1
    assert "--allow_changed corpus" in capsys.readouterr().err
    assert pretrain(corpus, out, *flags, "--resume", "--allow_changed", "bogus") == 1
    assert "--allow_changed bogus: not a setting of the run" in capsys.readouterr().err

    assert pretrain(corpus, out, *flags, "--resume") == 0  # nothing changed, nothing left to do
    assert f"the run in {out} is finished: step 4 of 4" in capsys.readouterr().out

    assert pretrain(corpus, out, "--max_steps", 6, "--eval_every", 2, "--lr", 5e-3, "--resume",
                    "--allow_changed", "lr,min_lr,max_steps") == 0  # min_lr: lr / 10 by default
    printed = capsys.readouterr().out
    assert "resuming from step 4 of 6" in printed and "--lr changes from 0.001 to 0.005" in printed
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["step"] == 6 and last["run_record"]["settings"]["lr"] == 5e-3
    assert {"step": 4, "flag": "lr", "from": 1e-3, "to": 5e-3} in last["run_record"]["changes"]


# ----------------------------------------------------------------------------------------------
# 3. Output folders: a folder holding another run is refused; one run at a time in a folder


def test_a_new_run_into_a_folder_holding_another_is_refused_unless_overwrite(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert pretrain(corpus, out, "--max_steps", 2, "--lr", 1e-3) == 0
    best = (out / "best.pt").read_bytes()
    assert pretrain(corpus, out, "--max_steps", 2, "--lr", 1e-3) == 0  # the same run again: allowed
    assert "holds a run with the same settings" in capsys.readouterr().out
    assert pretrain(corpus, out, "--max_steps", 3, "--lr", 2e-3) == 1
    err = capsys.readouterr().err
    assert f"{out / 'last.pt'} holds another pre-training run" in err and "--max_steps was 2" in err
    assert "--resume" in err and "--overwrite" in err and (out / "best.pt").read_bytes() == best
    assert pretrain(corpus, out, "--max_steps", 3, "--lr", 2e-3, "--overwrite") == 0
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 3


@pytest.mark.slow
def test_two_runs_in_one_folder_at_once_the_second_is_refused_and_a_stale_lock_is_taken_over(tmp_path, corpus,
                                                                                              capsys):
    out = tmp_path / "run"
    child = start_child(pretrain_args(corpus, out, "--max_steps", 100000, "--eval_every", 100000))
    wait_for_step(child, out, 1)
    assert pretrain(corpus, out, "--max_steps", 2, "--overwrite") == 1
    assert f"another run (process {child.pid}) is writing to {out}" in capsys.readouterr().err
    child.kill()  # kill -9: nothing cleans up, the lock stays behind
    child.communicate()
    assert (out / ".minllama.lock").read_text().strip() == str(child.pid)
    assert pretrain(corpus, out, "--max_steps", 2, "--overwrite") == 0
    assert f"took over the lock {out / '.minllama.lock'} of process {child.pid}" in capsys.readouterr().out
    assert not (out / ".minllama.lock").exists()  # released at the end


def test_classification_replaces_its_files_and_says_which(tmp_path, data, tiny_model, tokenizer_model_path, capsys):
    from testkit import sst_args

    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "prompt", "--skip_test", "--out_dir",
                    str(tmp_path))
    assert run_llama.main(args) == 0
    assert "replacing" not in capsys.readouterr().out
    assert run_llama.main(args) == 0
    assert (f"note: replacing the earlier run's {tmp_path / 'sst-dev-prompting-output.txt'}, "
            f"{tmp_path / 'sst-prompting-output.json'}") in capsys.readouterr().out


@pytest.mark.slow
def test_instruction_tuning_into_a_folder_holding_another_run_is_refused_unless_overwrite(tmp_path, capsys, tiny,
                                                                                          smollm2_path):
    model = tiny("smol-tiny.pt", vocab_size=49152, max_seq_len=256)
    instructions = tmp_path / "chat.jsonl"
    instructions.write_text(json.dumps({"instruction": "Say hello.", "response": "Hello!"}) + "\n")

    def instruct_tune(*extra):
        return run_llama.main(["--option", "instruct_tune", "--peft", "ia3", "--instructions", str(instructions),
                               "--epochs", "1", "--pretrained-model-path", str(model), "--tokenizer",
                               str(smollm2_path), "--out_dir", str(tmp_path / "run"), *extra])

    assert instruct_tune() == 0
    assert instruct_tune("--lr", "1e-3") == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / 'instruct_tune-1-2e-05.pt'} holds another instruction-tuning run" in err
    assert "--lr was 2e-05, this command says 0.001" in err and "--overwrite" in err
    assert instruct_tune("--lr", "1e-3", "--overwrite") == 0


# ----------------------------------------------------------------------------------------------
# 6. No flag is ignored without a word


def test_checkpoint_in_says_its_own_lora_rank_is_used(tmp_path, data, tiny_model, tokenizer_model_path, capsys):
    from testkit import sst_args

    rank_2 = Path(__file__).parent / "data" / "lora-checkpoint-with-flags.pt"  # rank 2, alpha 2
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "lora", "--checkpoint_in", str(rank_2),
                    "--lora_rank", "8", "--skip_test", "--out_dir", str(tmp_path))
    assert run_llama.main(args) == 0
    assert (f"note: --checkpoint_in {rank_2} keeps the shape it was trained with; not used: --lora_rank 8 (it has 2), "
            "--lora_alpha 1.0 (it has 2.0)") in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--option", "generate", "--max_seq_len", "100000"], "--max_seq_len shape a new model for --option pretrain"),
    (["--option", "pretrain", "--max_steps", "5", "--eval_every", "0"], "--eval_every must be positive, got 0"),
])
def test_flags_that_would_be_ignored_stop_the_parser(tmp_path, corpus, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run_llama.main(["--corpus", str(corpus), *flags, "--out_dir", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_an_absurd_pretraining_context_is_refused_with_the_memory_it_needs(tmp_path, corpus, capsys):
    started = time.monotonic()
    args = [a if a != "16" else "1000000" for a in pretrain_args(corpus, tmp_path, "--max_steps", 5)]
    assert run_llama.main(args) == 1
    err = capsys.readouterr().err
    assert "--max_seq_len 1000000 with 8 windows per micro-step needs about" in err and "GB for a training step" in err
    assert time.monotonic() - started < 10 and not list(tmp_path.glob("*.pt"))


def test_a_context_that_fits_but_is_slow_is_warned_about(capsys):
    from config import LlamaConfig
    from llama import Llama
    from minllama.pretraining.step_cost import check_step_cost

    model = Llama(LlamaConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=4, max_seq_len=100_000))
    check_step_cost(model, 100_000, 8, 8, torch.device("cpu"))  # fused attention: linear memory, square work
    assert "warning: --max_seq_len 100000 with --batch_size 8: a training step is about 6." in capsys.readouterr().out
    check_step_cost(model, 16, 8, 8, torch.device("cpu"))
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------------------------
# 7. Small things users hit


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    from minllama.instruct.instruct_data import read_conversations
    from minllama.training.data import corpus_documents, read_examples, read_label_names

    data = tmp_path / "sst-dev.txt"
    data.write_text("3 ||| a fine film\n0 ||| a dull one\n", encoding="utf-8-sig")  # "\ufeff3 ||| ..."
    assert data.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [e.label for e in read_examples(data)] == [3, 0]
    mapping = tmp_path / "labels.json"
    mapping.write_text('["bad", "good"]', encoding="utf-8-sig")
    assert read_label_names(mapping) == ["bad", "good"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("once upon a time", encoding="utf-8-sig")
    assert corpus_documents(corpus)[0] == ["once upon a time"]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"instruction": "Hi", "response": "Hello"}) + "\n", encoding="utf-8-sig")
    assert read_conversations(chat)[0][0]["content"] == "Hi"
