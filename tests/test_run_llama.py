"""Tests for run_llama.py: every option end to end through the command line (a tiny random
model and slices of the real data; SmolLM2 for zero-shot prompting), determinism, padding
invariance, and every bad input with its message. The bad-input cases and --option generate call
main() in-process (same code path as the command line, without paying Python's start-up for each)."""

import json
import random
import re
from pathlib import Path

import pytest
import torch

import minllama.training.data as data_module
import run_llama
from minllama.cli import common as commands
from minllama.training import objectives
from testkit import check_predictions, run_cli, sst_args
from tokenizer import Tokenizer

# ----------------------------------------------------------------------------------------------
# End to end through the command line


@pytest.mark.slow
def test_prompt_end_to_end(tmp_path, data, tiny_model, tokenizer_model_path):
    result = run_cli(["--option", "prompt", *sst_args(data, tiny_model, tokenizer_model_path)], tmp_path)
    assert result.returncode == 0, result.stderr
    check_predictions(tmp_path / "sst-dev-prompting-output.txt", data / "sst-dev.txt", 5)
    check_predictions(tmp_path / "sst-test-prompting-output.txt", data / "sst-test.txt", 5)
    assert "dev acc :: " in result.stdout and "test acc :: " in result.stdout
    summary = json.loads((tmp_path / "sst-prompting-output.json").read_text())
    assert summary["dev"]["examples"] == 12 and 0 <= summary["dev"]["accuracy"] <= 1


@pytest.mark.slow
def test_prompt_predictions_do_not_depend_on_batch_mates(tmp_path, data, tiny_model, tokenizer_model_path):
    outputs = []
    for batch_size in (1, 5):
        out = tmp_path / f"bs{batch_size}.txt"
        result = run_cli(["--option", "prompt", "--batch_size", batch_size, "--skip_test", "--dev_out", out,
                          *sst_args(data, tiny_model, tokenizer_model_path)], tmp_path)
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]


@pytest.mark.slow
def test_prompt_with_smollm2(tmp_path, data, smollm2_path):
    """The real model brings its own tokenizer; the CFIMDB test labels are placeholders."""
    result = run_cli(["--option", "prompt", "--pretrained-model-path", smollm2_path,
                      "--train", data / "sst-train.txt", "--dev", data / "cfimdb-dev.txt",
                      "--test", data / "cfimdb-test.txt", "--label-names", data / "cfimdb-label-mapping.json",
                      "--max_sentence_len", 64],  # reviews run to a thousand tokens: keep the test fast
                     tmp_path)
    assert result.returncode == 0, result.stderr
    check_predictions(tmp_path / "cfimdb-dev-prompting-output.txt", data / "cfimdb-dev.txt", 2)
    check_predictions(tmp_path / "cfimdb-test-prompting-output.txt", data / "cfimdb-test.txt", 2)
    assert "dev acc :: " in result.stdout
    assert "test acc ::" not in result.stdout and "placeholders" in result.stdout


@pytest.mark.slow
def test_finetune_end_to_end_and_deterministic(tmp_path, data, tiny_model, tokenizer_model_path):
    runs = []
    for name in ("a", "b"):
        result = run_cli(["--option", "finetune", "--epochs", 2, "--lr", 1e-3, "--out_dir", name,
                          *sst_args(data, tiny_model, tokenizer_model_path)], tmp_path)
        assert result.returncode == 0, result.stderr
        runs.append(tmp_path / name)
    assert "epoch 0: train loss :: " in result.stdout and "epoch 1: train loss :: " in result.stdout
    for split, source in (("dev", "sst-dev.txt"), ("test", "sst-test.txt")):
        check_predictions(runs[0] / f"sst-{split}-finetuning-output.txt", data / source, 5)
        assert ((runs[0] / f"sst-{split}-finetuning-output.txt").read_text()
                == (runs[1] / f"sst-{split}-finetuning-output.txt").read_text())

    checkpoint = torch.load(runs[0] / "finetune-2-0.001.pt", weights_only=True)
    assert "classifier_head.weight" in checkpoint["model"] and "llama.tok_embeddings.weight" in checkpoint["model"]
    assert checkpoint["model_config"]["dim"] == 32 and "args" not in checkpoint  # a record, not the flags
    assert checkpoint["choice"]["option"] == "finetune" and checkpoint["choice"]["checkpoint"] == str(tiny_model)
    summary = json.loads((runs[0] / "sst-finetuning-output.json").read_text())
    assert len(summary["epochs"]) == 2 and summary["trainable_fraction"] == 1.0
    assert summary["dev"]["accuracy"] == summary["epochs"][summary["best_epoch"]]["dev_acc"]


@pytest.mark.slow
def test_lora_trains_and_saves_only_adapters_and_head(tmp_path, data, tiny_model, tokenizer_model_path):
    result = run_cli(["--option", "lora", "--epochs", 1, "--lr", 1e-3, "--lora_alpha", 4, "--save_merged",
                      *sst_args(data, tiny_model, tokenizer_model_path)], tmp_path)
    assert result.returncode == 0, result.stderr
    check_predictions(tmp_path / "sst-dev-lora-output.txt", data / "sst-dev.txt", 5)
    assert "trainable parameters: " in result.stdout
    checkpoint = torch.load(tmp_path / "lora-1-0.001.pt", weights_only=True)
    names = set(checkpoint["model"])
    assert names and all("lora_" in name or name.startswith("classifier_head.") for name in names)
    assert {"classifier_head.weight", "classifier_head.bias"} <= names
    assert (checkpoint["choice"]["lora_rank"], checkpoint["choice"]["lora_alpha"]) == (4, 4.0)
    merged = torch.load(tmp_path / "lora-1-0.001.merged.pt", weights_only=True)
    assert not any("lora_" in name for name in merged["model"])
    assert merged["tokenizer"]["kind"] == "sentencepiece"  # found again without --tokenizer

    from llama import load_pretrained
    from tokenizer import tokenizer_for_checkpoint
    load_pretrained(tmp_path / "lora-1-0.001.merged.pt")  # a plain checkpoint again
    assert tokenizer_for_checkpoint(tmp_path / "lora-1-0.001.merged.pt").n_words == 32000


def test_generate_writes_both_temperatures(tmp_path, tiny_model, tokenizer_model_path):
    """In-process (the runs above start the script), so that the quick loop runs --option generate."""
    assert run_llama.main(["--option", "generate", "--pretrained-model-path", str(tiny_model),
                           "--tokenizer", str(tokenizer_model_path), "--out_dir", str(tmp_path)]) == 0
    for name in ("generated-sentence-temp-0.txt", "generated-sentence-temp-1.txt"):
        text = (tmp_path / name).read_text()
        assert text.startswith(commands.GENERATION_PROMPT) and len(text) > len(commands.GENERATION_PROMPT)


# ----------------------------------------------------------------------------------------------
# Bad input: a specific message, a non-zero exit, no traceback


def bad_line(tmp_path, name, line):
    path = tmp_path / name
    path.write_text(line, encoding="utf-8")
    return path


@pytest.mark.parametrize("content, message", [
    ("3 | a sentence without the separator\n", r"bad\.txt:1: expected 'LABEL \|\|\| SENTENCE'"),
    ("three ||| a sentence\n", r"bad\.txt:1: the label 'three' is not an integer"),
    ("7 ||| a sentence\n", r"bad\.txt:1: label 7 is outside the label mapping"),
    ("", r"bad\.txt: the data file is empty"),
    ("2 ||| a sentence\n3 |||   \n", r"bad\.txt:2: the sentence after ' \|\|\| ' is empty"),
])
def test_bad_dev_file(tmp_path, capsys, data, tiny_model, tokenizer_model_path, content, message):
    bad = bad_line(tmp_path, "bad.txt", content)
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "prompt", "--dev", str(bad),
                    "--out_dir", str(tmp_path))
    assert run_llama.main(args) == 1
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err


def expect_error(capsys, args, message):
    assert run_llama.main([str(a) for a in args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_missing_files(tmp_path, capsys, data, tiny_model, tokenizer_model_path):
    base = sst_args(data, tiny_model, tokenizer_model_path, "--option", "prompt", "--out_dir", str(tmp_path))
    expect_error(capsys, [*base, "--dev", tmp_path / "nope.txt"], "data file not found: ")
    expect_error(capsys, [*base, "--label-names", tmp_path / "nope.json"], "label mapping not found: ")
    expect_error(capsys, [*base, "--pretrained-model-path", tmp_path / "nope.pt"], "checkpoint not found: ")


def test_label_mapping_that_disagrees_with_the_training_labels(tmp_path, capsys, data, tiny_model,
                                                                tokenizer_model_path):
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "finetune", "--out_dir", str(tmp_path),
                    "--dev", str(data / "cfimdb-dev.txt"), "--label-names", str(data / "cfimdb-label-mapping.json"))
    expect_error(capsys, args, "sst-train.txt:")  # SST's label 4 is outside a two-label mapping
    two_label_train = bad_line(tmp_path, "train.txt", "0 ||| bad\n1 ||| fine\n")
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "finetune", "--out_dir", str(tmp_path),
                    "--train", str(two_label_train))
    expect_error(capsys, args, "names 5 labels, but the training labels")


def test_tokenizer_that_does_not_fit_the_model(tmp_path, capsys, data, tiny, tokenizer_model_path):
    small_vocab = tiny("vocab1000.pt", vocab_size=1000)
    args = sst_args(data, small_vocab, tokenizer_model_path, "--option", "prompt", "--out_dir", str(tmp_path))
    expect_error(capsys, args, "has 32000 tokens but the model")


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="a GPU is here")
def test_gpu_asked_for_but_absent(tmp_path, capsys, data, tiny_model, tokenizer_model_path):
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "prompt", "--use_gpu")
    expect_error(capsys, args, "--use_gpu was given, but PyTorch sees no GPU")


def test_nan_loss_stops_and_keeps_the_best_checkpoint(tmp_path, capsys, monkeypatch, data, tiny_model,
                                                      tokenizer_model_path):
    """The second epoch's first step returns a NaN loss: the run stops with the epoch-0 checkpoint."""
    calls, objective = [], objectives.ClassificationLoss.__call__

    def diverging(self, model, batch):
        calls.append(1)
        loss = objective(self, model, batch)
        return loss * float("nan") if len(calls) > 5 else loss  # 40 lines / 8 = 5 steps an epoch

    monkeypatch.setattr(objectives.ClassificationLoss, "__call__", diverging)
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "finetune", "--epochs", "3",
                    "--out_dir", str(tmp_path))
    expect_error(capsys, args, "the training loss became nan at step 5")
    assert (tmp_path / "finetune-3-2e-05.pt").is_file()
    assert not (tmp_path / "sst-dev-finetuning-output.txt").exists()


def test_long_inputs_are_truncated_with_a_count(tmp_path, capsys, data, tiny_model, tokenizer_model_path):
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "prompt", "--out_dir", str(tmp_path),
                    "--dev", str(data / "cfimdb-dev.txt"), "--label-names", str(data / "cfimdb-label-mapping.json"),
                    "--skip_test")
    assert run_llama.main(args) == 0
    assert "warning: 6 of 6 inputs in dev were longer than the model's context (95 tokens)" in capsys.readouterr().out
    check_predictions(tmp_path / "cfimdb-dev-prompting-output.txt", data / "cfimdb-dev.txt", 2)


# ----------------------------------------------------------------------------------------------
# Pieces


def test_max_sentence_len_cuts_the_sentence_not_the_question(tokenizer_model_path):
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model_path)
    example = data_module.Example(1, "one two three four five six", "x:1")
    question = [11, 12, 13]
    sentence = tokenizer.encode(example.sentence, bos=False, eos=False)
    encoded = data_module.encode_examples([example], tokenizer, 100, question, max_sentence_len=2)
    assert encoded == [[tokenizer.bos_id] + sentence[:2] + question]
    encoded = data_module.encode_examples([example], tokenizer, 6, question)  # context: room for 2 tokens
    assert encoded == [[tokenizer.bos_id] + sentence[:2] + question]


def test_a_model_without_bos_gets_none_and_the_room_for_one_more_token(smollm2_tokenizer):
    example = data_module.Example(1, "one two three four five six", "x:1")
    question = [11, 12, 13]
    sentence = smollm2_tokenizer.encode(example.sentence, bos=False, eos=False)
    encoded = data_module.encode_examples([example], smollm2_tokenizer, 6, question)
    assert encoded == [sentence[:3] + question]


def test_length_sorted_batches_cover_every_example_once_and_cut_padding():
    lengths = [random.Random(i).randint(1, 100) for i in range(500)]
    for rng in (None, random.Random(1)):
        batches = data_module.length_sorted_batches(lengths, 8, rng)
        assert sorted(i for batch in batches for i in batch) == list(range(500))
        assert all(len(batch) <= 8 for batch in batches)
        unsorted = [list(range(i, min(i + 8, 500))) for i in range(0, 500, 8)]
        assert data_module.padding_fraction(lengths, batches) < data_module.padding_fraction(lengths, unsorted) / 3
    assert (data_module.length_sorted_batches(lengths, 8, random.Random(1))
            == data_module.length_sorted_batches(lengths, 8, random.Random(1)))


def test_placeholder_labels_are_decided_on_the_whole_file(tmp_path):
    path = tmp_path / "x-dev.txt"
    path.write_text("0 ||| a\n0 ||| b\n\n", encoding="utf-8")
    assert data_module.has_placeholder_labels(path)
    path.write_text("0 ||| a\n0 ||| b\n1 ||| c\n", encoding="utf-8")
    assert not data_module.has_placeholder_labels(path)  # though its first two lines agree
    assert data_module.dataset_name("data/sst-dev.txt") == "sst"
    assert data_module.dataset_name("/x/cfimdb-train.txt") == "cfimdb"


# ----------------------------------------------------------------------------------------------
# A pipeline that survives its users


def test_ctrl_c_during_training_stops_cleanly_and_keeps_the_best_checkpoint(tmp_path, capsys, monkeypatch, data,
                                                                           tiny_model, tokenizer_model_path):
    import os
    import signal

    calls, objective = [], objectives.ClassificationLoss.__call__

    def interrupted(self, model, batch):
        calls.append(1)
        if len(calls) == 7:  # epoch 1, its second step
            os.kill(os.getpid(), signal.SIGINT)
        return objective(self, model, batch)

    monkeypatch.setattr(objectives.ClassificationLoss, "__call__", interrupted)
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "finetune", "--epochs", "3",
                    "--out_dir", str(tmp_path))
    assert run_llama.main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 7: the best checkpoint so far" in err and "epoch 0) is kept" in err
    assert "Traceback" not in err
    assert torch.load(tmp_path / "finetune-3-2e-05.pt", weights_only=True)["epoch"] == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_an_unwritable_output_folder_is_found_before_any_work(tmp_path, capsys, data, tiny_model, tokenizer_model_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "finetune", "--out_dir", str(blocker / "out"))
    expect_error(capsys, args, f"cannot write to the output folder {blocker / 'out'}")
    assert "loading" not in capsys.readouterr().out


@pytest.mark.parametrize("flag, value, message", [
    ("--lr", "-1", "--lr must be greater than 0, got -1.0"),
    ("--hidden_dropout_prob", "1.5", "--hidden_dropout_prob must be in [0, 1), got 1.5"),
    ("--batch_size", "0", "--batch_size must be positive, got 0"),
    ("--tokenizer", "char", "--tokenizer char builds a vocabulary from the corpus"),
])
def test_bad_flags_are_rejected_before_loading_anything(capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        run_llama.main(["--option", "finetune", flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_dev_alone_takes_train_and_test_from_its_own_data_set(tmp_path, data, tiny_model, tokenizer_model_path):
    """--dev sst-dev.txt without --test: the test split is sst-test.txt beside it, never CFIMDB's."""
    result = run_cli(["--option", "prompt", "--dev", data / "sst-dev.txt", "--pretrained-model-path", tiny_model,
                      "--tokenizer", tokenizer_model_path], tmp_path)
    assert result.returncode == 0, result.stderr
    check_predictions(tmp_path / "sst-test-prompting-output.txt", data / "sst-test.txt", 5)
    summary = json.loads((tmp_path / "sst-prompting-output.json").read_text())
    assert summary["test"]["data"] == str(data / "sst-test.txt") and "checkpoint_out" not in summary


@pytest.mark.slow
def test_default_inputs_are_found_from_another_folder(tmp_path, tiny_model, tokenizer_model_path, asset):
    asset("data/cfimdb-dev.txt")  # the repository's own data, laid out by setup.sh
    result = run_cli(["--option", "prompt", "--limit", 3, "--max_sentence_len", 16, "--pretrained-model-path",
                      tiny_model, "--tokenizer", tokenizer_model_path], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cfimdb-dev-prompting-output.txt").is_file()
    assert "dev acc :: " in result.stdout  # 3 real labels of the whole file, not placeholders


@pytest.mark.slow
def test_checkpoint_in_predicts_again_without_training(tmp_path, data, tiny_model, tokenizer_model_path):
    first = run_cli(["--option", "finetune", "--epochs", 1, "--lr", 1e-3, "--skip_test", "--out_dir", "a",
                     *sst_args(data, tiny_model, tokenizer_model_path)], tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_cli(["--option", "finetune", "--checkpoint_in", tmp_path / "a" / "finetune-1-0.001.pt", "--skip_test",
                     "--out_dir", "b", *sst_args(data, tiny_model, tokenizer_model_path)], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "train loss ::" not in again.stdout and "loaded " in again.stdout  # nothing trained
    assert ((tmp_path / "a" / "sst-dev-finetuning-output.txt").read_text()
            == (tmp_path / "b" / "sst-dev-finetuning-output.txt").read_text())
    wrong = run_cli(["--option", "lora", "--checkpoint_in", tmp_path / "a" / "finetune-1-0.001.pt",
                     *sst_args(data, tiny_model, tokenizer_model_path)], tmp_path)
    assert wrong.returncode == 1 and "was trained with --option finetune, not lora" in wrong.stderr


def test_checkpoint_in_reads_a_checkpoint_written_before_the_record(tmp_path, data, tiny_model, tokenizer_model_path,
                                                                    capsys):
    """tests/data/lora-checkpoint-with-flags.pt was written by the code before the typed record: it
    stores the command line (vars(args)) and {"lora": {"rank": 2, "alpha": 2.0}}. Rebuilt from those
    (rank 2 although the flags say 4), its adapters load strictly and predict."""
    old = Path(__file__).parent / "data" / "lora-checkpoint-with-flags.pt"
    stored = torch.load(old, weights_only=True)
    assert "choice" not in stored and stored["lora"] == {"rank": 2, "alpha": 2.0} and "lora_targets" in stored["args"]
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "lora", "--checkpoint_in", str(old),
                    "--skip_test", "--out_dir", str(tmp_path))
    assert run_llama.main(args) == 0
    out = capsys.readouterr().out
    assert "loaded " in out and "train loss ::" not in out
    check_predictions(tmp_path / "sst-dev-lora-output.txt", data / "sst-dev.txt", 5)


def test_a_diverging_learning_rate_is_reported(tmp_path, capsys, data, tiny_model, tokenizer_model_path):
    args = sst_args(data, tiny_model, tokenizer_model_path, "--option", "finetune", "--epochs", "6", "--lr", "1000",
                    "--out_dir", str(tmp_path), "--skip_test")
    assert run_llama.main(args) == 1
    err = capsys.readouterr().err
    assert ("the training loss diverged" in err or "the training loss became nan" in err) and "try a lower --lr" in err
