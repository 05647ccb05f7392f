"""Checks of sampling and generation: greedy, temperature, epsilon, top-k and top-p filtering, the
cropped context, the KV cache, left-padded prompts and stop tokens."""

import inspect

import pytest
import torch

import llama
from llama import Llama, sample_next_token
from support import course

PROBABILITIES = torch.tensor([0.6, 0.3, 0.07, 0.03])


def frequencies(**sampling) -> torch.Tensor:
    """How often each of 4 tokens is drawn, over 20000 rows of logits log(PROBABILITIES)."""
    torch.manual_seed(0)
    tokens = sample_next_token(PROBABILITIES.log().expand(20000, 4), **sampling)
    assert tokens.shape == (20000, 1)
    return torch.bincount(tokens[:, 0], minlength=4).float() / 20000


def test_sampling_at_temperature_zero_is_argmax():
    logits = torch.randn(5, 96, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next_token(logits, temperature=0.0), logits.argmax(-1, keepdim=True))


def test_sampling_follows_the_tempered_distribution():
    """epsilon 0: plain sampling from softmax(logits / temperature); temperature 0.5 squares p."""
    expected = PROBABILITIES ** 2 / (PROBABILITIES ** 2).sum()
    torch.testing.assert_close(frequencies(temperature=0.5, epsilon=0.0), expected, atol=0.015, rtol=0)


@pytest.mark.parametrize("sampling, kept", [
    (dict(epsilon=0.05), [0, 1, 2]),  # p < epsilon dropped
    (dict(epsilon=0.0, top_k=2), [0, 1]),  # the k most likely
    (dict(epsilon=0.0, top_p=0.8), [0, 1]),  # the smallest set whose mass reaches top_p: 0.6 + 0.3
    (dict(epsilon=0.9), [0]),  # the most likely token always survives
])
def test_sampling_filters_renormalise_what_is_left(sampling, kept):
    expected = torch.zeros(4)
    expected[kept] = PROBABILITIES[kept] / PROBABILITIES[kept].sum()
    torch.testing.assert_close(frequencies(temperature=1.0, **sampling), expected, atol=0.015, rtol=0)


@pytest.mark.parametrize("bad", [dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_sampling_refuses_meaningless_filters(bad):
    with pytest.raises(ValueError):
        sample_next_token(torch.randn(2, 96), temperature=1.0, **bad)


def greedy_reference(model: Llama, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding by hand: the whole (cropped) context through the model at every step."""
    tokens = prompt
    for _ in range(n):
        logits, _ = model(tokens[:, -model.config.max_seq_len:])
        tokens = torch.cat((tokens, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return tokens


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_crops_the_context(lively_model, use_cache):
    """5 + 14 tokens: past max_seq_len = 16, so the model must only see the last 16 (with the
    KV cache, the window slides: the cache starts again from the cropped window)."""
    model = lively_model()
    prompt = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.generate(prompt, 14, temperature=0.0, use_cache=use_cache),
                       greedy_reference(model, prompt, 14))


def test_generate_passes_its_sampling_options_on(small_model, monkeypatch):
    """Every step picks its token with sample_next_token(logits, temperature, epsilon, top_k, top_p),
    the options given to generate."""
    model = small_model()
    seen = []

    def recording_sampler(*args, **kwargs):
        seen.append(inspect.signature(sample_next_token).bind(*args, **kwargs).arguments)
        return sample_next_token(*args, **kwargs)

    monkeypatch.setattr(llama, "sample_next_token", recording_sampler)
    options = dict(temperature=0.7, epsilon=0.01, top_k=5, top_p=0.9)
    model.generate(torch.randint(0, 96, (2, 4)), 3, **options)
    assert len(seen) == 3
    for arguments in seen:
        assert arguments["logits"].shape == (2, 96)
        assert {name: arguments.get(name) for name in options} == options


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_of_left_padded_prompts_matches_each_prompt_alone(lively_model, use_cache):
    """Prompts of 3 and 5 tokens in one batch, the short one left-padded, attention_mask marking the
    real tokens: every row continues as it would alone."""
    model = lively_model()
    prompts = torch.randint(1, 96, (2, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = model.generate(prompts, 6, temperature=0.0, attention_mask=mask, use_cache=use_cache)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompts)
    assert torch.equal(out[0, 5:], model.generate(prompts[:1, 2:], 6, temperature=0.0)[0, 3:])
    assert torch.equal(out[1, 5:], model.generate(prompts[1:], 6, temperature=0.0)[0, 5:])


def test_generation_stops_when_every_row_has_a_stop_token(lively_model):
    model = lively_model()
    prompts = torch.randint(0, 96, (2, 4), generator=torch.Generator().manual_seed(3))
    free = model.generate(prompts, 8, temperature=0.0)
    stop = int(free[0, 6])  # the third token row 0 generates
    first_stop = int((free[0, 4:] == stop).nonzero()[0])

    alone = model.generate(prompts[:1], 8, temperature=0.0, stop_tokens=[stop])
    assert torch.equal(alone, free[:1, :4 + first_stop + 1])  # ends with the stop token

    both = model.generate(prompts, 8, temperature=0.0, stop_tokens=[stop])
    for row in range(2):
        generated = both[row, 4:]
        stopped = (generated == stop).nonzero()
        if len(stopped):  # a row that stopped repeats its stop token while the other goes on
            at = int(stopped[0])
            assert torch.equal(generated[:at + 1], free[row, 4:4 + at + 1])
            assert (generated[at:] == stop).all()
        else:
            assert torch.equal(generated, free[row, 4:4 + len(generated)])


def test_generate_keeps_the_course_signature():
    """Graders call generate(idx, max_new_tokens, temperature): keep those names and that order.
    Called so, it samples plainly from softmax(logits / temperature) in the LUH course (epsilon
    0) and drops tokens with p < 0.05 in the CMU course."""
    parameters = inspect.signature(Llama.generate).parameters
    assert list(parameters)[:4] == ["self", "idx", "max_new_tokens", "temperature"]
    assert parameters["temperature"].default == 1.0
    assert parameters["epsilon"].default == course.default().epsilon


def test_sampled_generation_keeps_the_prompt(small_model):
    model = small_model()
    prompt = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    out = model.generate(prompt, 6, temperature=1.0)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    assert 0 <= out.min() and out.max() < 96
