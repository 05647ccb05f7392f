"""The classification methods of issue 11 through the command line, on conftest.py's tiny random
model (test_run_llama.py's too): IA3, prompt tuning, prompt-based fine-tuning, K-shot and
calibrated prompting, --head_init label_words with WiSE-FT, Mixout, early stopping, stratified
--limit, --advanced names, and every bad input with its message. In-process main() calls (the
command line's code path, without Python's start-up for each)."""

import json
import re
from collections import Counter

import pytest
import torch

import run_llama
from minllama.training.data import Example, stratified_sample
from testkit import check_predictions, sst_args

FAST = ("--epochs", "1", "--lr", "1e-3", "--skip_test", "--limit", "12")


def run(capsys, data, model, tokenizer_path, out, *extra) -> str:
    args = sst_args(data, model, tokenizer_path, "--out_dir", str(out), *FAST, *extra)
    code = run_llama.main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def expect_error(capsys, data, model, tokenizer_path, message, *extra):
    """A bad flag stops argparse (exit 2); a bad input found later returns 1. Either way: the message."""
    try:
        code = run_llama.main([str(a) for a in sst_args(data, model, tokenizer_path, *extra)])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code in (1, 2) and re.search(message, err) and "Traceback" not in err, err


def saved_tensors(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# ----------------------------------------------------------------------------------------------
# Parameter-efficient methods: only their tensors train, are saved, reload strictly


def test_ia3_trains_only_vectors_and_head_reloads_and_merges(tmp_path, capsys, data, tiny_model,
                                                             tokenizer_model_path):
    out = run(capsys, data, tiny_model, tokenizer_model_path, tmp_path / "a", "--option", "ia3", "--save_merged")
    assert "of which adapters: " in out
    saved = saved_tensors(tmp_path / "a" / "ia3-1-0.001.pt")
    assert saved and all("ia3_scale" in name or name.startswith("classifier_head.") for name in saved)
    assert any(not torch.equal(t, torch.ones_like(t)) for name, t in saved.items() if "ia3_" in name)  # trained
    summary = json.loads((tmp_path / "a" / "sst-ia3-output.json").read_text())
    assert summary["adapter_parameters"] == 2 * (16 + 16 + 96)  # 2 layers x (keys 16 + values 16 + w2 input 96)
    merged = torch.load(tmp_path / "a" / "ia3-1-0.001.merged.pt", weights_only=True)
    assert not any("ia3" in name for name in merged["model"])
    run(capsys, data, tiny_model, tokenizer_model_path, tmp_path / "b", "--option", "ia3",
        "--checkpoint_in", tmp_path / "a" / "ia3-1-0.001.pt")
    assert ((tmp_path / "a" / "sst-dev-ia3-output.txt").read_text()
            == (tmp_path / "b" / "sst-dev-ia3-output.txt").read_text())


def test_prompt_tuning_trains_only_the_soft_prompt_and_head(tmp_path, capsys, data, tiny_model,
                                                            tokenizer_model_path):
    run(capsys, data, tiny_model, tokenizer_model_path, tmp_path / "a", "--option", "prompt_tuning",
        "--n_virtual_tokens", 5, "--prompt_init", "random")
    saved = saved_tensors(tmp_path / "a" / "prompt_tuning-1-0.001.pt")
    assert set(saved) == {"llama.prompt_embeddings", "classifier_head.weight", "classifier_head.bias"}
    assert saved["llama.prompt_embeddings"].shape == (5, 32)
    check_predictions(tmp_path / "a" / "sst-dev-prompt_tuning-output.txt", data / "sst-dev.txt", 5)
    # the reload rebuilds 5 virtual tokens from the checkpoint's own flags, whatever this command says
    run(capsys, data, tiny_model, tokenizer_model_path, tmp_path / "b", "--option", "prompt_tuning",
        "--checkpoint_in", tmp_path / "a" / "prompt_tuning-1-0.001.pt")
    assert ((tmp_path / "a" / "sst-dev-prompt_tuning-output.txt").read_text()
            == (tmp_path / "b" / "sst-dev-prompt_tuning-output.txt").read_text())


def test_prompt_tuning_from_the_label_word_head_reloads_with_its_question(tmp_path, capsys, data, tiny_model,
                                                                        tokenizer_model_path):
    run(capsys, data, tiny_model, tokenizer_model_path, tmp_path / "a", "--option", "prompt_tuning",
        "--n_virtual_tokens", 3, "--head_init", "label_words")
    # the checkpoint's own --head_init brings back the question after each sentence: the same dev loss
    run(capsys, data, tiny_model, tokenizer_model_path, tmp_path / "b", "--option", "prompt_tuning",
        "--checkpoint_in", tmp_path / "a" / "prompt_tuning-1-0.001.pt")
    losses = [json.loads((tmp_path / run_ / "sst-prompt_tuning-output.json").read_text())["dev"]["loss"]
              for run_ in "ab"]
    assert losses[0] == losses[1]
    run(capsys, data, tiny_model, tokenizer_model_path, tmp_path / "c", "--option", "prompt_tuning",
        "--n_virtual_tokens", 3)
    assert json.loads((tmp_path / "c" / "sst-prompt_tuning-output.json").read_text())["dev"]["loss"] != losses[0]


def test_lora_targets_choose_the_projections(tmp_path, capsys, data, tiny_model, tokenizer_model_path):
    run(capsys, data, tiny_model, tokenizer_model_path, tmp_path, "--option", "lora", "--lora_targets", "w2",
        "--lora_dropout", "0.1")
    adapted = {name.split(".")[-2] for name in saved_tensors(tmp_path / "lora-1-0.001.pt") if "lora_" in name}
    assert adapted == {"w2"}


def test_prompt_finetune_with_lora_trains_the_adapters_of_the_scoring_model(tmp_path, capsys, data, tiny_model,
                                                                           tokenizer_model_path):
    run(capsys, data, tiny_model, tokenizer_model_path, tmp_path, "--option", "prompt_finetune", "--peft", "lora")
    saved = saved_tensors(tmp_path / "prompt_finetune-1-0.001.pt")
    assert saved and all("lora_" in name for name in saved)  # no head: the language-model head classifies
    check_predictions(tmp_path / "sst-dev-prompt_finetune-output.txt", data / "sst-dev.txt", 5)


# ----------------------------------------------------------------------------------------------
# Prompting: demonstrations, calibration, the chat template; the plain path is unchanged


def test_shots_and_calibration_change_the_prompt_and_the_scores(tmp_path, capsys, data, tiny_model,
                                                                tokenizer_model_path):
    accuracy = {}
    for name, extra in (("plain", ()), ("shots", ("--shots", 1)), ("calibrated", ("--calibrate",)),
                        ("chat", ("--chat_template",))):
        run(capsys, data, tiny_model, tokenizer_model_path, tmp_path / name, "--option", "prompt", *extra)
        summary = json.loads((tmp_path / name / "sst-prompting-output.json").read_text())
        accuracy[name] = summary["dev"]["loss"]
    # the same frozen model, four prompts: four different dev losses
    assert len(set(accuracy.values())) == 4, accuracy


def test_wise_ft_at_zero_is_the_zero_shot_classifier(tmp_path, capsys, data, tiny_model, tokenizer_model_path):
    run(capsys, data, tiny_model, tokenizer_model_path, tmp_path / "prompt", "--option", "prompt")
    out = run(capsys, data, tiny_model, tokenizer_model_path, tmp_path / "wise", "--option", "finetune",
              "--head_init", "label_words", "--wise_ft", "0", "--lr", "1e-2")
    assert "wise-ft alpha 0: dev acc :: " in out
    assert ((tmp_path / "prompt" / "sst-dev-prompting-output.txt").read_text()
            == (tmp_path / "wise" / "sst-dev-finetuning-output.txt").read_text())
    summary = json.loads((tmp_path / "wise" / "sst-finetuning-output.json").read_text())
    assert summary["wise_ft"]["best_alpha"] == 0.0


def test_wise_ft_sweeps_every_coefficient_with_lora(tmp_path, capsys, data, tiny_model, tokenizer_model_path):
    out = run(capsys, data, tiny_model, tokenizer_model_path, tmp_path, "--option", "lora", "--head_init",
              "label_words", "--wise_ft", "0,0.5,1")
    summary = json.loads((tmp_path / "sst-lora-output.json").read_text())
    assert set(summary["wise_ft"]["dev_accuracy"]) == {"0.0", "0.5", "1.0"}
    assert f"wise-ft: kept alpha {summary['wise_ft']['best_alpha']:g}" in out


def test_mixout_wraps_the_projections(tmp_path, capsys, monkeypatch, data, tiny_model, tokenizer_model_path):
    from minllama.methods import mixout

    calls = []
    original = mixout.mixout
    monkeypatch.setattr(mixout, "mixout", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    run(capsys, data, tiny_model, tokenizer_model_path, tmp_path, "--option", "finetune", "--mixout", "0.3")
    assert calls and set(calls) == {0.3}


# ----------------------------------------------------------------------------------------------
# Training hygiene and data


def test_patience_stops_early_on_dev_loss(tmp_path, capsys, data, tiny_model, tokenizer_model_path):
    out = run(capsys, data, tiny_model, tokenizer_model_path, tmp_path, "--option", "finetune", "--epochs", 20,
              "--eval_every", 1, "--patience", 1, "--early_stop_on", "loss", "--lr", "1e-1")
    assert "early stop at step" in out and "loss has not improved" in out
    summary = json.loads((tmp_path / "sst-finetuning-output.json").read_text())
    evaluations = summary["epochs"]
    assert len(evaluations) < 20 * 2  # 2 steps an epoch, one evaluation a step: it stopped early
    best = min(evaluations, key=lambda e: e["dev_loss"])
    assert torch.load(tmp_path / "finetune-20-0.1.pt", weights_only=True)["step"] == best["step"]


def test_stratified_limit_keeps_the_label_proportions():
    examples = [Example(label, f"s{i}", f"f:{i}") for i, label in enumerate([0] * 60 + [1] * 30 + [2] * 10)]
    drawn = stratified_sample(examples, 10, seed=3)
    assert Counter(e.label for e in drawn) == {0: 6, 1: 3, 2: 1}
    assert drawn == sorted(drawn, key=lambda e: int(e.sentence[1:]))  # file order kept
    assert drawn == stratified_sample(examples, 10, seed=3) and drawn != stratified_sample(examples, 10, seed=4)


def test_advanced_names_the_outputs(tmp_path, capsys, data, tiny_model, tokenizer_model_path):
    run(capsys, data, tiny_model, tokenizer_model_path, tmp_path, "--option", "prompt", "--advanced", "--stratified")
    check_predictions(tmp_path / "sst-dev-advanced-output.txt", data / "sst-dev.txt", 5)
    assert (tmp_path / "sst-advanced-output.json").is_file()


# ----------------------------------------------------------------------------------------------
# Bad input: one clear message, before any work


@pytest.mark.parametrize("extra, message", [
    (("--option", "lora", "--peft", "ia3"), r"--peft is for --option prompt_finetune"),
    (("--option", "prompt", "--peft", "lora"), r"--peft is for --option prompt_finetune"),
    (("--option", "finetune", "--wise_ft", "0,1.5", "--head_init", "label_words"), r"must be in \[0, 1\]"),
    (("--option", "finetune", "--wise_ft", "0,1"), r"add --head_init label_words"),
    (("--option", "lora", "--lora_targets", "attention,wq"), r"unknown projection 'wq'"),
    (("--option", "finetune", "--stratified"), r"--stratified draws --limit"),
    (("--option", "prompt", "--n_virtual_tokens", "4"), r"--n_virtual_tokens is for --option prompt_tuning"),
    (("--option", "finetune", "--mixout", "1"), r"--mixout must be in \(0, 1\)"),
])
def test_bad_method_flags_are_rejected_while_parsing(capsys, data, tiny_model, tokenizer_model_path, extra, message):
    expect_error(capsys, data, tiny_model, tokenizer_model_path, message, *extra)


def test_bad_method_inputs_are_found_before_training(tmp_path, capsys, data, tiny_model, tokenizer_model_path):
    out = ("--out_dir", tmp_path)
    expect_error(capsys, data, tiny_model, tokenizer_model_path,
                 r"--shots 45 needs more training examples per label .*label 0: 8 examples, 9 needed",
                 "--option", "prompt", "--shots", 45, *out)
    expect_error(capsys, data, tiny_model, tokenizer_model_path, r"leaves no room for a sentence .*use fewer --shots",
                 "--option", "prompt", "--shots", 5, *out)
    expect_error(capsys, data, tiny_model, tokenizer_model_path, r"--n_virtual_tokens 96: .*no room for a sentence",
                 "--option", "prompt_tuning", "--n_virtual_tokens", 96, *out)
    assert not list(tmp_path.glob("*.pt"))
