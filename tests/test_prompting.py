"""Tests for prompting.py: general prompts, K-shot demonstrations on a shared prefix cache,
contextual calibration, prompt-based fine-tuning. References: one plain forward pass per
(sentence, label) over the whole typed-out sequence, and hand computations. Tiny random models."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from classifier import LlamaZeroShotClassifier
from config import LlamaConfig
from llama import Llama
from lora import apply_lora
from minllama.methods.ia3 import apply_ia3
from minllama.methods.prompting import (CalibratedClassifier, PromptClassifier, PromptTemplate, build_prompt,
                                        content_free_queries, draw_demonstrations)
from tokenizer import Tokenizer

LABELS = ["terrible", "okayish", "wonderful"]  # several tokens each: the KV-cache path for the label tails
SENTENCES = ["A fine film .", "Dull , dull , dull .", "I laughed ."]
TRAIN = [(0, "Awful ."), (1, "It was fine ."), (2, "Superb !"), (0, "Boring ."), (2, "Loved it ."), (1, "Meh .")]
CONFIG = dict(vocab_size=32000, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    state = Llama(LlamaConfig(**CONFIG)).state_dict()
    state["output.weight"] *= 30  # (tied) peaked predictions: label scores far apart
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save({"model_args": LlamaConfig(**CONFIG).to_dict(), "model": state}, path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_model_path):
    return Tokenizer(tokenizer_model=tokenizer_model_path)


def load(checkpoint):
    from llama import load_pretrained
    return load_pretrained(checkpoint)


def queries(tokenizer, prompt, sentences=SENTENCES):
    rows = [prompt.query(tokenizer.encode(s, bos=False, eos=False)) for s in sentences]
    longest = max(map(len, rows))
    ids = torch.tensor([r + [0] * (longest - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    return ids, mask


def naive_shares(llama, prompt, tokenizer, sentences=SENTENCES):
    """log p(label | prefix + sentence + suffix), one unpadded pass per (sentence, label), renormalised."""
    rows = []
    for sentence in sentences:
        context = prompt.prefix_ids + prompt.query(tokenizer.encode(sentence, bos=False, eos=False))
        scores = []
        for ids in prompt.label_ids:
            sequence = torch.tensor([context + ids])
            log_probs = F.log_softmax(llama(sequence, targets=sequence)[0][0].float(), dim=-1)
            scores.append(sum(log_probs[p, sequence[0, p + 1]] for p in range(len(context) - 1, sequence.shape[1] - 1)))
        rows.append(torch.stack(scores))
    return torch.stack(rows).log_softmax(-1)


def test_zero_shot_prompt_is_the_zero_shot_classifier(checkpoint, tokenizer):
    classifier_config = SimpleNamespace(pretrained_model_path=checkpoint, num_labels=3, option="pretrain")
    zero_shot = LlamaZeroShotClassifier(classifier_config, tokenizer, LABELS)
    prompt = build_prompt(tokenizer, PromptTemplate.question(LABELS), LABELS)
    assert prompt.prefix_ids == [tokenizer.bos_id] and prompt.suffix_ids == zero_shot.question_ids
    assert prompt.label_ids == zero_shot.label_ids and max(map(len, prompt.label_ids)) > 1
    model = PromptClassifier(load(checkpoint), prompt)
    ids, mask = queries(tokenizer, prompt)
    with torch.no_grad():
        with_bos = torch.cat([torch.full((len(SENTENCES), 1), tokenizer.bos_id), ids], 1)
        expected = zero_shot(with_bos, torch.cat([torch.ones(len(SENTENCES), 1, dtype=torch.long), mask], 1))
        torch.testing.assert_close(model(ids, mask), expected.log_softmax(-1), atol=1e-5, rtol=1e-5)


def test_k_shot_on_the_shared_prefix_cache_equals_typing_everything(checkpoint, tokenizer):
    demonstrations = draw_demonstrations(TRAIN, 3, k=4, seed=1)
    template = PromptTemplate(prefix="Reviews and their ratings.\n", suffix="\nRating:", label_prefix=" ")
    prompt = build_prompt(tokenizer, template, LABELS, demonstrations)
    assert len(prompt.prefix_ids) > 20
    llama = load(checkpoint)
    model = PromptClassifier(llama, prompt)
    ids, mask = queries(tokenizer, prompt)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), naive_shares(llama, prompt, tokenizer), atol=1e-4, rtol=1e-4)


def test_a_frozen_prefix_runs_once_a_trained_one_every_call(checkpoint, tokenizer):
    prompt = build_prompt(tokenizer, PromptTemplate.question(LABELS), LABELS, draw_demonstrations(TRAIN, 3, 3, seed=0))
    model = PromptClassifier(load(checkpoint), prompt)
    lengths = []
    model.llama.llama.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape))
    ids, mask = queries(tokenizer, prompt)
    with torch.no_grad():
        model(ids, mask)
        model(ids, mask)
    prefix_calls = [shape for shape in lengths if shape[1] == len(prompt.prefix_ids)]
    assert prefix_calls == [(1, len(prompt.prefix_ids))]  # once, for a batch of one: not once per row
    model.llama.llama.requires_grad_(True)
    lengths.clear()
    model(ids, mask)
    assert [s for s in lengths if s[1] == len(prompt.prefix_ids)] == [(1, len(prompt.prefix_ids))]


def test_demonstrations_are_balanced_seeded_and_checked():
    examples = [(label, f"s{label}-{i}") for label in range(3) for i in range(5)]
    drawn = draw_demonstrations(examples, 3, k=8, seed=7)
    counts = sorted(sum(1 for label, _ in drawn if label == l) for l in range(3))
    assert counts == [2, 3, 3] and len(set(drawn)) == 8
    assert drawn == draw_demonstrations(examples, 3, k=8, seed=7) != draw_demonstrations(examples, 3, k=8, seed=8)
    with pytest.raises(ValueError, match=r"--shots 18 needs more.*label 0: 5 examples, 6 needed"):
        draw_demonstrations(examples, 3, k=18, seed=0)


def test_calibration_divides_out_the_content_free_preference(checkpoint, tokenizer):
    prompt = build_prompt(tokenizer, PromptTemplate.question(LABELS), LABELS)
    base = PromptClassifier(load(checkpoint), prompt)
    content_free = content_free_queries(tokenizer, prompt)
    assert content_free[1] == prompt.suffix_ids  # the empty input: the question alone
    calibrated = CalibratedClassifier(base, content_free)
    ids, mask = queries(tokenizer, prompt)
    with torch.no_grad():
        p = base(ids, mask).exp()
        p_cf = torch.cat([base(torch.tensor([q])).exp() for q in content_free]).mean(0)
        by_hand = (p / p_cf) / (p / p_cf).sum(-1, keepdim=True)
        torch.testing.assert_close(calibrated(ids, mask).exp(), by_hand)
        one = CalibratedClassifier(base, content_free[:1])  # calibrated on "N/A" alone, "N/A" is uniform
        torch.testing.assert_close(one(torch.tensor([content_free[0]])).exp(), torch.full((1, 3), 1 / 3))


@pytest.mark.parametrize("adapt", ["full", "lora", "ia3"])
def test_prompt_based_fine_tuning_learns_the_label_words(checkpoint, tokenizer, adapt):
    prompt = build_prompt(tokenizer, PromptTemplate.question(LABELS), LABELS)
    model = PromptClassifier(load(checkpoint), prompt)
    backbone = model.llama.llama
    if adapt == "lora":
        apply_lora(backbone, rank=4, alpha=8.0)
    elif adapt == "ia3":
        apply_ia3(backbone)
    else:
        backbone.requires_grad_(True)
    assert all(p.requires_grad == (adapt == "full" or "lora_" in n or "ia3_" in n) for n, p in model.named_parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    ids, mask = queries(tokenizer, prompt)
    gold = torch.tensor([2, 0, 1])
    optimizer = torch.optim.Adam(trainable, lr={"full": 1e-2, "lora": 1e-2, "ia3": 3e-1}[adapt])
    losses = []
    for _ in range(8):
        loss = F.nll_loss(model(ids, mask), gold)  # -log(p(gold word) / sum of the label words' p)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_soft_prompt_scored_by_the_label_words(checkpoint, tokenizer):
    """Lester et al.'s own setup: a soft prompt (prompt_tuning.py) under the label-word scoring;
    only the soft prompt trains, and initialised from tokens it equals typing them first."""
    from minllama.methods.prompt_tuning import PromptTunedLlama

    prompt = build_prompt(tokenizer, PromptTemplate.question(LABELS), LABELS, draw_demonstrations(TRAIN, 3, 3, seed=2))
    init = tokenizer.encode("Rate the review", bos=False, eos=False)
    model = PromptClassifier(PromptTunedLlama(load(checkpoint), init), prompt)
    soft = model.llama.llama.prompt_embeddings.requires_grad_(True)  # PromptClassifier starts all frozen
    ids, mask = queries(tokenizer, prompt)
    typed = type(prompt)(init + prompt.prefix_ids, prompt.suffix_ids, prompt.label_ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), naive_shares(load(checkpoint), typed, tokenizer),
                                   atol=1e-4, rtol=1e-4)
    F.nll_loss(model(ids, mask), torch.tensor([0, 1, 2])).backward()
    assert soft.grad.abs().sum() > 0
    assert [n for n, p in model.named_parameters() if p.grad is not None] == ["llama.llama.prompt_embeddings"]
