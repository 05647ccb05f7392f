"""Tests for classifier.py: zero-shot scoring against a naive reference, the prompt's tokens,
the embedding classifier's pooling and padding masks. Tiny random models, CPU, seconds."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from classifier import (LlamaEmbeddingClassifier, LlamaZeroShotClassifier, continuation_ids,
                        last_real_positions, zero_shot_question)
from config import LlamaConfig
from llama import Llama
from tokenizer import Tokenizer

SENTENCES = ["It 's a lovely film with lovely performances by Buy and Accorsi .",
             "Bad .",
             "No one goes unindicted here , which is probably for the best ."]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random 2-layer GQA Llama with Llama 2's vocabulary, saved in the course's .pt format."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=96)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save({"model_args": config.to_dict(), "model": Llama(config).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_model_path):
    return Tokenizer(tokenizer_model=tokenizer_model_path)


def config(path, num_labels, option="pretrain", dropout=0.0):
    return SimpleNamespace(pretrained_model_path=path, num_labels=num_labels, option=option,
                           hidden_dropout_prob=dropout)


def right_padded(sequences, pad_id=0):
    longest = max(map(len, sequences))
    ids = torch.tensor([s + [pad_id] * (longest - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in sequences])
    return ids, mask


def prompts(classifier, tokenizer):
    return [[tokenizer.bos_id] + tokenizer.encode(s, bos=False, eos=False) + classifier.question_ids
            for s in SENTENCES]


def naive_label_scores(llama, prompt, label_ids):
    """The definition: one full unpadded forward pass per label over prompt + label tokens,
    summing log p(label token j | everything before it)."""
    scores = []
    for ids in label_ids:
        sequence = torch.tensor([prompt + ids])
        logits, _ = llama(sequence, targets=sequence)  # (1, T, V): every position
        log_probs = F.log_softmax(logits[0].float(), dim=-1)
        positions = range(len(prompt) - 1, len(prompt) + len(ids) - 1)  # position p predicts token p + 1
        scores.append(sum(log_probs[p, sequence[0, p + 1]].item() for p in positions))
    return torch.tensor(scores)


def test_question_text_matches_upstream():
    assert zero_shot_question(["bad", "good"]) == "Is this movie bad or good? This movie is"
    assert (zero_shot_question(["awful", "bad", "average", "good", "excellent"])
            == "Is this movie awful, bad, average, good, or excellent? This movie is")


def test_label_tokens_are_those_of_running_text(tokenizer):
    question = zero_shot_question(["bad", "good"])
    good = continuation_ids(tokenizer, question, " good")
    assert good == tokenizer.encode("good", bos=False, eos=False)  # ['▁good'], not ['▁', '▁good']
    assert tokenizer.encode(" good", bos=False, eos=False) != good  # the trap the helper avoids


def test_prompt_pieces_equal_encoding_the_whole_prompt(tiny_checkpoint, tokenizer):
    names = ["awful", "bad", "average", "good", "excellent"]
    classifier = LlamaZeroShotClassifier(config(tiny_checkpoint, 5), tokenizer, names)
    question = zero_shot_question(names)
    for sentence, prompt in zip(SENTENCES, prompts(classifier, tokenizer)):
        assert prompt == tokenizer.encode(f"{sentence} {question}", bos=True, eos=False)


def test_smollm2_prompt_pieces_equal_encoding_the_whole_prompt(smollm2_tokenizer):
    question = zero_shot_question(["bad", "good"])
    question_ids = continuation_ids(smollm2_tokenizer, ".", " " + question)
    for sentence in SENTENCES:
        whole = smollm2_tokenizer.encode(f"{sentence} {question} good", bos=False, eos=False)
        pieces = (smollm2_tokenizer.encode(sentence, bos=False, eos=False) + question_ids
                  + continuation_ids(smollm2_tokenizer, question, " good"))
        assert pieces == whole


@pytest.mark.parametrize("names", [["bad", "good"],  # one token each: the prompt alone scores them
                                   ["truly terrible", "meh", "an absolute masterpiece"]])  # several tokens
def test_zero_shot_equals_naive_per_label_scoring(tiny_checkpoint, tokenizer, names):
    classifier = LlamaZeroShotClassifier(config(tiny_checkpoint, len(names)), tokenizer, names).eval()
    if len(names) == 3:
        assert classifier.max_label_len > 1
    batch = prompts(classifier, tokenizer)
    ids, mask = right_padded(batch)
    scores = classifier(ids, attention_mask=mask)
    assert scores.shape == (len(SENTENCES), len(names))
    with torch.no_grad():
        for row, prompt in enumerate(batch):
            expected = naive_label_scores(classifier.llama, prompt, classifier.label_ids)
            torch.testing.assert_close(scores[row], expected, atol=1e-4, rtol=1e-5)


def test_zero_shot_without_mask_equals_unpadded_rows(tiny_checkpoint, tokenizer):
    classifier = LlamaZeroShotClassifier(config(tiny_checkpoint, 2), tokenizer, ["bad", "good"]).eval()
    prompt = prompts(classifier, tokenizer)[0]
    alone = classifier(torch.tensor([prompt]))
    ids, mask = right_padded([prompt, prompt + [5] * 7])
    torch.testing.assert_close(classifier(ids, attention_mask=mask)[0], alone[0], atol=1e-5, rtol=1e-5)


def test_last_real_positions_for_both_padding_sides():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert last_real_positions(right).tolist() == [2, 3, 0]
    assert last_real_positions(right.flip(-1)).tolist() == [3, 3, 3]


def test_embedding_classifier_pools_the_last_real_token(tiny_checkpoint):
    torch.manual_seed(0)
    classifier = LlamaEmbeddingClassifier(config(tiny_checkpoint, 5)).eval()
    sequences = [[1, 20, 30, 40], [1, 50], [1, 60, 70, 80, 90, 100]]
    ids, mask = right_padded(sequences)
    batched = classifier(ids, attention_mask=mask)
    assert batched.shape == (3, 5)
    torch.testing.assert_close(batched.exp().sum(-1), torch.ones(3))
    for row, sequence in enumerate(sequences):  # a row does not depend on its batch-mates' padding
        torch.testing.assert_close(batched[row], classifier(torch.tensor([sequence]))[0], atol=1e-5, rtol=1e-5)
    # Left padding: the mask gives positions and pooling, so the result is the same.
    left_ids = torch.tensor([[0] * (6 - len(s)) + s for s in sequences])
    left_mask = torch.tensor([[0] * (6 - len(s)) + [1] * len(s) for s in sequences])
    torch.testing.assert_close(classifier(left_ids, attention_mask=left_mask), batched, atol=1e-5, rtol=1e-5)


def test_embedding_classifier_options_choose_what_trains(tiny_checkpoint):
    frozen = LlamaEmbeddingClassifier(config(tiny_checkpoint, 2, option="pretrain"))
    trained = {name for name, p in frozen.named_parameters() if p.requires_grad}
    assert trained == {"classifier_head.weight", "classifier_head.bias"}
    full = LlamaEmbeddingClassifier(config(tiny_checkpoint, 2, option="finetune"))
    assert all(p.requires_grad for p in full.parameters())
    with pytest.raises(ValueError, match="option"):
        LlamaEmbeddingClassifier(config(tiny_checkpoint, 2, option="lora"))


def test_embedding_classifier_applies_dropout_in_training_only(tiny_checkpoint):
    classifier = LlamaEmbeddingClassifier(config(tiny_checkpoint, 2, dropout=0.5))
    ids = torch.tensor([[1, 20, 30, 40]])
    classifier.train()
    assert not torch.equal(classifier(ids), classifier(ids))
    classifier.eval()
    assert torch.equal(classifier(ids), classifier(ids))
