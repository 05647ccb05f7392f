"""Tests for decoding.py: min-p and the repetition penalty against hand computations, and through
Llama.generate (with and without the KV cache). Tiny random model."""

import pytest
import torch

from config import LlamaConfig
from llama import Llama
from minllama.inference.decoding import logits_filters, min_p_filter, penalise_repetitions

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


def tiny_llama():
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)).eval()


def test_min_p_keeps_tokens_above_a_fraction_of_the_top_probability():
    probs = torch.tensor([[0.5, 0.3, 0.12, 0.08]])
    for temperature in (1.0, 0.5):
        logits = probs.log() * temperature  # softmax(logits / temperature) = probs
        kept = torch.isfinite(min_p_filter(logits, min_p=0.2, temperature=temperature))
        assert kept.tolist() == [[True, True, True, False]]  # 0.08 < 0.2 * 0.5 <= 0.12
    assert torch.equal(min_p_filter(probs.log(), 0.2, temperature=0.0), probs.log())  # greedy untouched
    with pytest.raises(ValueError, match=r"min_p must be in \(0, 1\]"):
        min_p_filter(probs, 0.0)


def test_repetition_penalty_lowers_every_seen_token():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    context = torch.tensor([[0, 1, 1, 3]])
    mask = torch.tensor([[1, 1, 1, 0]])  # token 3 sits on a pad position: not seen
    out = penalise_repetitions(logits, context, 2.0, mask)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]


def test_min_p_one_samples_the_greedy_continuation():
    model = tiny_llama()
    prompt = torch.randint(0, 64, (2, 5))
    greedy = model.generate(prompt, max_new_tokens=10, temperature=0.0)
    with logits_filters(model, temperature=1.0, min_p=1.0):
        sampled = model.generate(prompt, max_new_tokens=10, temperature=1.0, epsilon=0.0)
    assert torch.equal(sampled, greedy)
    assert not model._forward_pre_hooks and not model.output._forward_hooks  # the hooks are gone


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_strong_repetition_penalty_avoids_every_token_of_the_context(use_cache):
    model = tiny_llama()
    prompt = torch.randint(0, 64, (1, 4))
    plain = model.generate(prompt, max_new_tokens=20, temperature=0.0, use_cache=use_cache)
    assert len(set(plain[0].tolist())) < plain.shape[1]  # greedy decoding of a random model repeats
    with logits_filters(model, temperature=0.0, repetition_penalty=1e6):
        penalised = model.generate(prompt, max_new_tokens=20, temperature=0.0, use_cache=use_cache)
    new = penalised[0, 4:].tolist()
    assert len(set(new)) == len(new) and not set(new) & set(prompt[0].tolist())
