"""Tests for instruct_tuning.py (--option instruct_tune): the targets are the answer tokens only
(masked positions get no gradient, the loss is the hand-computed mean over the answer tokens),
--peft trains only the adapters, and the command line end to end, with SmolLM2's tokenizer and
chat template on a tiny random model of its vocabulary, and its errors before any training."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import run_llama
from config import LlamaConfig
from llama import Llama
from minllama.inference.chat import ChatTemplate
from minllama.instruct.instruct_data import classification_conversations, encode_conversation
from minllama.instruct.instruct_tuning import build_model, instruction_batch, label_answer_ids, shifted
from minllama.training.objectives import IGNORE, LanguageModelLoss
from testkit import run_cli

LABELS = ["bad", "good"]


@pytest.fixture(scope="module")
def template(smollm2_tokenizer):
    return ChatTemplate.for_tokenizer(smollm2_tokenizer)


@pytest.fixture(scope="module")
def smol_tiny(tiny):
    """A tiny random Llama with SmolLM2's vocabulary, for its tokenizer and chat template."""
    return tiny("smol-tiny.pt", vocab_size=49152, max_seq_len=256)


def conversation(sentence, label):
    return classification_conversations([SimpleNamespace(sentence=sentence, label=label)], LABELS)[0]


def tiny_llama(vocab_size=49152):
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128))


def test_targets_are_the_next_answer_tokens_and_padding_is_ignored(template, smollm2_tokenizer):
    ids, mask = encode_conversation(template, smollm2_tokenizer, conversation("Dull and long.", 0))
    inputs, targets = shifted(ids, mask)
    assert inputs == ids[:-1] and len(targets) == len(inputs)
    learned = [t for t in targets if t != IGNORE]
    assert learned == smollm2_tokenizer.encode("bad<|im_end|>", bos=False, eos=False)
    first = targets.index(learned[0])  # the position before the answer predicts its first token
    assert inputs[first + 1] == learned[0] and all(t == IGNORE for t in targets[:first])
    short = shifted(*encode_conversation(template, smollm2_tokenizer, conversation("Fine.", 1)))
    batch = instruction_batch([(inputs, targets), short], smollm2_tokenizer.pad_id, "cpu")
    assert batch["input_ids"].shape == batch["targets"].shape == batch["attention_mask"].shape
    row = batch["attention_mask"][1]
    assert (batch["targets"][1][row == 0] == IGNORE).all() and row[:len(short[0])].all()


def loss_and_logits_grad(llama, batch):
    """The objective's loss, and the gradient it sends to every position's logits."""
    seen = {}

    def keep_logits(module, args, output):
        output[0].retain_grad()
        seen["logits"] = output[0]

    handle = llama.register_forward_hook(keep_logits)
    loss = LanguageModelLoss()(llama, batch)
    loss.backward()
    handle.remove()
    return loss.detach(), seen["logits"].grad


def test_masked_positions_get_no_gradient(template, smollm2_tokenizer):
    llama = tiny_llama()
    ids, mask = encode_conversation(template, smollm2_tokenizer, conversation("A fine, warm film.", 1))
    inputs, targets = shifted(ids, mask)
    batch = instruction_batch([(inputs, targets)], smollm2_tokenizer.pad_id, "cpu")
    loss, grad = loss_and_logits_grad(llama, batch)
    learned = torch.tensor(targets) != IGNORE
    assert grad[0, ~learned].abs().max() == 0 and (grad[0, learned].abs().amax(-1) > 0).all()

    def loss_with_token(position, token):
        """The loss when ids[position] is another token in the targets only (the inputs stay)."""
        changed = list(ids)
        changed[position] = token
        llama.zero_grad()
        return loss_and_logits_grad(llama, instruction_batch([(inputs, shifted(changed, mask)[1])],
                                                             smollm2_tokenizer.pad_id, "cpu"))

    instruction_position = mask.index(1) - 3  # a token of the user's turn
    same_loss, same_grad = loss_with_token(instruction_position, 42)
    assert same_loss == loss and torch.equal(same_grad, grad)
    answer_position = mask.index(1)  # the label word
    other_loss, other_grad = loss_with_token(answer_position, 42)
    assert other_loss != loss and not torch.equal(other_grad, grad)


def test_loss_is_the_mean_over_the_answer_tokens_of_the_batch(template, smollm2_tokenizer):
    llama = tiny_llama()
    pairs = [shifted(*encode_conversation(template, smollm2_tokenizer, conversation(s, label)))
             for s, label in (("Dull and far too long for what it says.", 0), ("Great.", 1))]
    batch = instruction_batch(pairs, smollm2_tokenizer.pad_id, "cpu")
    with torch.no_grad():
        loss = LanguageModelLoss()(llama, batch)
        terms = []
        for inputs, targets in pairs:  # each conversation alone, unpadded
            logits, _ = llama(torch.tensor([inputs]), targets=torch.tensor([targets]))
            log_probs = F.log_softmax(logits[0], dim=-1)
            terms += [-log_probs[t, target] for t, target in enumerate(targets) if target != IGNORE]
    assert len(terms) == 2 * 2  # the label word and <|im_end|>, twice
    torch.testing.assert_close(loss, torch.stack(terms).mean(), rtol=1e-5, atol=1e-5)


def test_label_words_are_scored_with_the_tokens_training_learns(template, smollm2_tokenizer, tokenizer_model_path):
    assert label_answer_ids(template, smollm2_tokenizer, LABELS) == [
        smollm2_tokenizer.encode(name, bos=False, eos=False) for name in LABELS]
    from tokenizer import Tokenizer
    sentencepiece = Tokenizer(tokenizer_model=tokenizer_model_path)
    fallback = ChatTemplate(None)  # "Assistant: bad\n": the answer's tokens follow "Assistant:"
    for name, ids in zip(LABELS, label_answer_ids(fallback, sentencepiece, LABELS)):
        answer, mask = encode_conversation(fallback, sentencepiece, [{"role": "user", "content": "?"},
                                                                     {"role": "assistant", "content": name}])
        learned = [token for token, learn in zip(answer, mask) if learn]
        assert learned[:len(ids)] == ids and sentencepiece.decode(ids).strip() == name


@pytest.mark.parametrize("peft, prefix", [("lora", "lora_"), ("ia3", "ia3_"), (None, "")])
def test_peft_trains_only_the_adapters(smol_tiny, peft, prefix):
    run = SimpleNamespace(checkpoint=smol_tiny, model_overrides={}, peft=peft, lora_rank=2, lora_alpha=2.0)
    llama = build_model(run)
    before = {name: p.detach().clone() for name, p in llama.named_parameters()}
    trainable = {name for name, p in llama.named_parameters() if p.requires_grad}
    assert trainable and all(prefix in name for name in trainable)
    if peft is None:
        assert trainable == set(before)
    ids = list(range(5, 25))
    batch = instruction_batch([shifted(ids, [0] * 10 + [1] * 10)], 0, "cpu")
    optimizer = torch.optim.SGD([p for p in llama.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):  # LoRA's B starts at zero: its A moves from the second step on
        LanguageModelLoss()(llama, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {name for name, p in llama.named_parameters() if not torch.equal(p, before[name])}
    assert changed == trainable


@pytest.mark.slow
def test_instruct_tune_end_to_end_with_a_chat_template(tmp_path, data, smol_tiny, smollm2_path):  # noqa: F811
    result = run_cli(["--option", "instruct_tune", "--peft", "lora", "--lora_rank", 2, "--lora_alpha", 2,
                      "--lr", "1e-3", "--epochs", 1, "--batch_size", 20, "--pretrained-model-path", smol_tiny,
                      "--tokenizer", smollm2_path, "--train", data / "sst-train.txt", "--dev", data / "sst-dev.txt",
                      "--test", data / "sst-test.txt", "--label-names", data / "sst-label-mapping.json"], tmp_path)
    assert result.returncode == 0, result.stderr
    for split, n in (("dev", 12), ("test", 9)):
        lines = (tmp_path / f"sst-{split}-instruct_tune-output.txt").read_text().splitlines()
        assert len(lines) == n and all(int(line.split(" ||| ")[0]) in range(5) for line in lines)
    assert "dev acc :: " in result.stdout and "dev generated acc :: " in result.stdout
    summary = json.loads((tmp_path / "sst-instruct_tune-output.json").read_text())
    generated = summary["dev"]["generated"]
    assert 0 <= generated["accuracy"] <= 1 and 0 <= generated["no_label"] <= 12 == generated["examples"]
    assert summary["peft"] == "lora" and summary["train_conversations"] == 40 and summary["chat_template"]
    checkpoint = torch.load(tmp_path / "instruct_tune-1-0.001.pt", weights_only=True)
    assert checkpoint["option"] == "instruct_tune" and "args" not in checkpoint
    tuning = checkpoint["tuning"]
    assert tuning["peft"] == "lora" and (tuning["lora_rank"], tuning["lora_alpha"]) == (2, 2.0)
    assert checkpoint["model"] and all("lora_" in name for name in checkpoint["model"])


def test_instructions_file_trains_without_classification(tmp_path, capsys, smol_tiny, smollm2_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in (
        {"instruction": "Say hello.", "response": "Hello!"},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]})) + "\n")
    code = run_llama.main(["--option", "instruct_tune", "--peft", "ia3", "--instructions", str(path), "--epochs", "2",
                           "--pretrained-model-path", str(smol_tiny), "--tokenizer", str(smollm2_path),
                           "--out_dir", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "chat-instruct_tune-output.json").read_text())
    assert summary["train_conversations"] == 2 and [e["epoch"] for e in summary["epochs"]] == [0, 1]
    assert "dev" not in summary and "dev acc" not in capsys.readouterr().out
    saved = torch.load(tmp_path / "instruct_tune-2-2e-05.pt", weights_only=True)["model"]
    assert saved and all("ia3_" in name for name in saved)


def test_a_bad_instructions_line_is_an_error_before_training(tmp_path, capsys, smol_tiny):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"instruction": "Hi", "response": "Hello"}) + '\n{"instruction": "Hi"}\n')
    code = run_llama.main(["--option", "instruct_tune", "--instructions", str(path),
                           "--pretrained-model-path", str(smol_tiny), "--out_dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and f"{path}:2: " in captured.err and "response" in captured.err
    assert "loading" not in captured.out and not list(tmp_path.glob("*.pt"))


@pytest.mark.parametrize("argv, message", [
    (["--option", "lora", "--peft", "ia3"], "--peft is for --option prompt_finetune or instruct_tune"),
    (["--option", "finetune", "--instructions", "x.jsonl"], "--instructions is the training data"),
])
def test_instruct_flags_elsewhere_are_rejected(capsys, argv, message):
    with pytest.raises(SystemExit):
        run_llama.get_args(argv)
    assert message in capsys.readouterr().err
