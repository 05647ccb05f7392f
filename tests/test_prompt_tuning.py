"""Tests for prompt_tuning.py: a soft prompt initialised from tokens behaves exactly like those
tokens typed in front of the input (the independent reference), with padding masks, both
classifiers and the KV cache; what trains; the adapter-only checkpoint. Tiny random models."""

import copy
from types import SimpleNamespace

import pytest
import torch

from classifier import LlamaEmbeddingClassifier, LlamaZeroShotClassifier
from config import LlamaConfig
from llama import Llama
from minllama.methods.prompt_tuning import (PromptTunedLlama, apply_prompt_tuning, context_budget,
                                            count_prompt_tuning_parameters, load_prompt_tuning_state_dict,
                                            prompt_init_ids, prompt_tuning_state_dict)
from tokenizer import Tokenizer

CONFIG = dict(vocab_size=32000, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48)
INIT = [5, 17, 900, 17]  # P = 4 virtual tokens, one repeated

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save({"model_args": LlamaConfig(**CONFIG).to_dict(), "model": Llama(LlamaConfig(**CONFIG)).state_dict()},
               path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_model_path):
    return Tokenizer(tokenizer_model=tokenizer_model_path)


def classifier_config(path, num_labels=3):
    return SimpleNamespace(pretrained_model_path=path, num_labels=num_labels, option="pretrain",
                           hidden_dropout_prob=0.0)


def tiny_llama():
    return Llama(LlamaConfig(**CONFIG)).eval()


def right_padded(rows, pad=0):
    longest = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (longest - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    return ids, mask


def test_soft_prompt_from_tokens_equals_typing_those_tokens():
    llama = tiny_llama()
    tuned = PromptTunedLlama(copy.deepcopy(llama), INIT)
    idx = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        logits, hidden = tuned(idx, targets=idx)
        expected_logits, expected_hidden = llama(torch.cat([torch.tensor([INIT] * 2), idx], 1), targets=idx)
        assert hidden.shape == (2, 7, CONFIG["dim"]) and logits.shape == (2, 7, CONFIG["vocab_size"])
        torch.testing.assert_close(hidden, expected_hidden[:, len(INIT):])
        torch.testing.assert_close(logits, expected_logits[:, len(INIT):])
        last_logits, _ = tuned(idx)  # without targets: the last position only, as Llama
        torch.testing.assert_close(last_logits, expected_logits[:, -1:])


def test_a_padded_batch_gives_each_row_its_unpadded_result():
    tuned = PromptTunedLlama(tiny_llama(), INIT)
    with torch.no_grad():
        tuned.prompt_embeddings.normal_()  # learned vectors, no longer any token's
    rows = [[3, 4, 5, 6, 7], [8, 9]]
    ids, mask = right_padded(rows)
    with torch.no_grad():
        _, hidden = tuned(ids, attention_mask=mask)
        for b, row in enumerate(rows):
            _, alone = tuned(torch.tensor([row]))
            torch.testing.assert_close(hidden[b, :len(row)], alone[0], atol=1e-5, rtol=1e-4)


def test_embedding_classifier_pools_the_last_real_token(checkpoint):
    plain = LlamaEmbeddingClassifier(classifier_config(checkpoint)).eval()
    tuned = apply_prompt_tuning(copy.deepcopy(plain), INIT)
    rows = [[1, 40, 41, 42], [1, 43]]
    ids, mask = right_padded(rows)
    with torch.no_grad():
        expected = [plain(torch.tensor([INIT + row]))[0] for row in rows]  # the prompt typed in, no padding
        torch.testing.assert_close(tuned(ids, attention_mask=mask), torch.stack(expected), atol=1e-5, rtol=1e-4)


def test_zero_shot_classifier_runs_on_the_cache_with_the_soft_prompt(checkpoint, tokenizer):
    """Several-token labels take the KV-cache path (prompt once, label tokens after it)."""
    names = ["terrible", "okayish", "wonderful"]
    plain = LlamaZeroShotClassifier(classifier_config(checkpoint), tokenizer, names)
    assert plain.max_label_len > 1
    tuned = LlamaZeroShotClassifier(classifier_config(checkpoint), tokenizer, names)
    apply_prompt_tuning(tuned, INIT)
    rows = [[tokenizer.bos_id] + tokenizer.encode(s, bos=False, eos=False) + plain.question_ids
            for s in ("A fine film .", "Dull .")]
    ids, mask = right_padded(rows)
    expected = torch.cat([plain(torch.tensor([INIT + row])) for row in rows])
    torch.testing.assert_close(tuned(ids, attention_mask=mask), expected, atol=1e-4, rtol=1e-4)


def test_only_the_soft_prompt_and_the_head_train(checkpoint):
    classifier = apply_prompt_tuning(LlamaEmbeddingClassifier(classifier_config(checkpoint)), INIT)
    classifier.classifier_head.requires_grad_(True)
    trainable = {name for name, p in classifier.named_parameters() if p.requires_grad}
    assert trainable == {"llama.prompt_embeddings", "classifier_head.weight", "classifier_head.bias"}
    count = count_prompt_tuning_parameters(classifier)
    head = CONFIG["dim"] * 3 + 3
    assert count.adapter == len(INIT) * CONFIG["dim"] and count.trainable == count.adapter + head
    ids, mask = right_padded([[1, 40, 41], [1, 42]])
    classifier.train()(ids, attention_mask=mask)[:, 0].sum().backward()
    assert classifier.llama.prompt_embeddings.grad.abs().sum() > 0
    assert classifier.llama.llama.tok_embeddings.weight.grad is None


def test_state_dict_round_trip_is_strict(checkpoint, tmp_path):
    trained = apply_prompt_tuning(LlamaEmbeddingClassifier(classifier_config(checkpoint)), INIT).eval()
    with torch.no_grad():
        trained.llama.prompt_embeddings.normal_()
    torch.save(prompt_tuning_state_dict(trained), tmp_path / "prompt.pt")
    saved = torch.load(tmp_path / "prompt.pt", weights_only=True)
    assert list(saved) == ["llama.prompt_embeddings"]
    fresh = apply_prompt_tuning(LlamaEmbeddingClassifier(classifier_config(checkpoint)), INIT).eval()
    fresh.classifier_head.load_state_dict(trained.classifier_head.state_dict())
    load_prompt_tuning_state_dict(fresh, saved)
    ids = torch.tensor([[1, 50, 51]])
    with torch.no_grad():
        assert torch.equal(fresh(ids), trained(ids))
    other_length = apply_prompt_tuning(LlamaEmbeddingClassifier(classifier_config(checkpoint)), INIT[:2])
    with pytest.raises(ValueError, match=r"shapes do not match.*saved \(4, 32\), model \(2, 32\)"):
        load_prompt_tuning_state_dict(other_length, saved)


def test_context_budget_shrinks_by_the_prompt_and_must_leave_room():
    assert context_budget(tiny_llama()) == CONFIG["max_seq_len"]
    assert context_budget(PromptTunedLlama(tiny_llama(), INIT)) == CONFIG["max_seq_len"] - len(INIT)
    with pytest.raises(ValueError, match="leave no room for a sentence"):
        PromptTunedLlama(tiny_llama(), [5] * CONFIG["max_seq_len"])
    tuned = PromptTunedLlama(tiny_llama(), INIT)
    with pytest.raises(ValueError, match="exceed max_seq_len"):
        tuned(torch.zeros(1, CONFIG["max_seq_len"] - len(INIT) + 1, dtype=torch.long))


def test_init_ids_repeat_or_cut_a_text_or_draw_random_tokens(tokenizer):
    text = "Is this movie bad or good? This movie is"
    ids = tokenizer.encode(text, bos=False, eos=False)
    assert prompt_init_ids(tokenizer, len(ids) + 3, text) == ids + ids[:3]
    assert prompt_init_ids(tokenizer, 2, text) == ids[:2]
    drawn = prompt_init_ids(tokenizer, 20, seed=1)
    assert drawn == prompt_init_ids(tokenizer, 20, seed=1) != prompt_init_ids(tokenizer, 20, seed=2)
    assert len(set(drawn)) == 20 and not {tokenizer.bos_id, tokenizer.eos_id} & set(drawn)
    with pytest.raises(ValueError, match="must be positive"):
        prompt_init_ids(tokenizer, 0, text)
