"""Tests for generation: Llama.generate against manual loops of full forwards, the key/value
cache against no cache, batches of left-padded prompts against single prompts, stop tokens,
and sample_next_token's filters against the sets they must keep. Tiny random models, CPU."""

import pytest
import torch
import torch.nn.functional as F

from config import LlamaConfig
from llama import Llama, sample_next_token
from testkit import left_pad, manual_greedy, random_tokens, tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


# ---------------------------------------------------------------------------------------------
# Llama.generate


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_equals_manual_argmax_loop(use_cache):
    """Reference: argmax of a full forward, one token at a time; the prompt comes back first."""
    model = tiny_llama()
    idx = random_tokens(2, 5)
    out = model.generate(idx, 12, temperature=0.0, use_cache=use_cache)
    assert out.shape == (2, 17)
    assert torch.equal(out[:, :5], idx)
    assert torch.equal(out, manual_greedy(model, idx, 12))
    assert len(set(out[0, 5:].tolist())) > 3  # a continuation that varies, so the comparison means something


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_cached_equals_uncached(n_kv_heads, fused):
    """Reference: generation without the cache (full forwards), greedy and sampled under one seed."""
    model = tiny_llama(n_kv_heads=n_kv_heads, fused_attention=fused)
    idx = random_tokens(3, 6)
    assert torch.equal(model.generate(idx, 15, temperature=0.0, use_cache=True),
                       model.generate(idx, 15, temperature=0.0, use_cache=False))
    torch.manual_seed(1)
    sampled_cached = model.generate(idx, 15, temperature=1.0, epsilon=0.02, use_cache=True)
    torch.manual_seed(1)
    assert torch.equal(sampled_cached, model.generate(idx, 15, temperature=1.0, epsilon=0.02, use_cache=False))


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_left_padded_batch_equals_each_prompt_alone(use_cache, fused):
    """Reference: each prompt generated alone, unpadded, greedily."""
    model = tiny_llama(fused_attention=fused)
    prompts = [random_tokens(n) for n in (7, 3, 1)]
    idx, mask = left_pad(prompts)
    out = model.generate(idx, 10, temperature=0.0, attention_mask=mask, use_cache=use_cache)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], 10, temperature=0.0, use_cache=use_cache)
        assert torch.equal(out[row, 7 - len(prompt):], alone[0])


@pytest.mark.parametrize("prompt_len", [10, 30])
def test_context_beyond_max_seq_len_is_cropped(prompt_len):
    """Reference: the manual loop over the last max_seq_len tokens; cached equals uncached
    when the context slides past max_seq_len (24), also for a prompt longer than it."""
    model = tiny_llama()
    idx = random_tokens(2, prompt_len)
    expected = manual_greedy(model, idx, 20)
    assert torch.equal(model.generate(idx, 20, temperature=0.0, use_cache=True), expected)
    assert torch.equal(model.generate(idx, 20, temperature=0.0, use_cache=False), expected)


def test_cropped_left_padded_batch_equals_each_prompt_alone():
    """Reference: each prompt alone; the crop keeps every real token of the shorter (padded)
    rows that it keeps when they are alone, so the batch still agrees beyond max_seq_len."""
    model = tiny_llama()
    prompts = [random_tokens(20), random_tokens(12)]
    idx, mask = left_pad(prompts)
    for use_cache in (True, False):
        out = model.generate(idx, 16, temperature=0.0, attention_mask=mask, use_cache=use_cache)
        for row, prompt in enumerate(prompts):
            alone = model.generate(prompt[None], 16, temperature=0.0, use_cache=use_cache)
            assert torch.equal(out[row, 20 - len(prompt):], alone[0])


def expected_with_stops(free_run: torch.Tensor, prompt_len: int, stop_tokens: set[int]) -> list[list[int]]:
    """What a greedy run with stop tokens must give, derived from the same run without them:
    each row is cut after its first stop token and then repeats it, until every row has
    stopped (or max_new_tokens is reached)."""
    rows = []
    for row in free_run[:, prompt_len:].tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in stop_tokens), len(row))
        rows.append(row[:end])
    length = max(len(row) for row in rows)
    return [row + [row[-1]] * (length - len(row)) for row in rows]


@pytest.mark.parametrize("use_cache", [True, False])
def test_stop_tokens_per_row_and_early_exit(use_cache):
    """Reference: expected_with_stops, applied to the same greedy run without stop tokens."""
    model = tiny_llama()
    idx = random_tokens(2, 4)
    free_run = model.generate(idx, 12, temperature=0.0, use_cache=use_cache)
    new = free_run[:, 4:].tolist()
    per_row, both_rows = {new[0][2]}, {new[0][2], new[1][3]}
    for stop_tokens in (per_row, both_rows):
        out = model.generate(idx, 12, temperature=0.0, stop_tokens=stop_tokens, use_cache=use_cache)
        assert torch.equal(out[:, :4], idx)
        assert out[:, 4:].tolist() == expected_with_stops(free_run, 4, stop_tokens)
        if stop_tokens is per_row:  # row 0 stopped at its third token and repeats it while row 1 goes on
            assert out.shape[1] > 4 + 4 and (out[0, 4 + 3:] == new[0][2]).all()
        else:  # both rows stopped by their fourth token: the loop ended early
            assert out.shape[1] <= 4 + 4


@pytest.mark.parametrize("token", [1, 2])
def test_no_early_stop_by_default(token):
    """Reference: the contract (TinyStories models end a story with BOS, not EOS): always T + n
    tokens, even from a model rigged (final LayerNorm gives a constant hidden state) to emit only
    the SentencePiece BOS (1) or EOS (2) id."""
    model = tiny_llama(norm_type="layernorm")
    with torch.no_grad():
        model.norm.weight.zero_()
        model.norm.bias.zero_()
        model.norm.bias[0] = 1.0  # hidden state e_0 at every position
        model.output.weight[:, 0] = 0.0
        model.output.weight[token, 0] = 1.0  # so only `token` gets a non-zero logit
    out = model.generate(random_tokens(2, 3), 9, temperature=0.0)
    assert out.shape == (2, 12)
    assert (out[:, 3:] == token).all()


def test_sampling_is_deterministic_under_manual_seed():
    """Reference: two runs under one torch.manual_seed agree; another seed gives another text."""
    model = tiny_llama()
    idx = random_tokens(2, 4)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(model.generate(idx, 15, temperature=1.0, epsilon=0.0))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


# ---------------------------------------------------------------------------------------------
# sample_next_token

# A fixed next-token distribution, deliberately not sorted: token 3 is the most likely.
PROBS = torch.tensor([0.04, 0.30, 0.01, 0.50, 0.15])
LOGITS = PROBS.log()


def draw(logits: torch.Tensor, n: int = 4000, **kwargs) -> torch.Tensor:
    """n samples (one per row of a batch of n identical rows), under a fixed seed."""
    torch.manual_seed(1234)
    tokens = sample_next_token(logits.expand(n, -1), **kwargs)
    assert tokens.shape == (n, 1)
    return tokens.flatten()


@pytest.mark.parametrize("kwargs, support", [
    (dict(epsilon=0.05), {1, 3, 4}),                      # p < 0.05 dropped
    (dict(epsilon=0.06), {1, 3, 4}),
    (dict(epsilon=0.06, temperature=2.0), {0, 1, 3, 4}),  # sqrt(p) renormalised: token 0 rises to 0.10
    (dict(epsilon=0.0), {0, 1, 2, 3, 4}),
    (dict(epsilon=0.0, top_k=1), {3}),
    (dict(epsilon=0.0, top_k=2), {1, 3}),
    (dict(epsilon=0.0, top_k=4), {0, 1, 3, 4}),
    (dict(epsilon=0.0, top_k=50), {0, 1, 2, 3, 4}),
    (dict(epsilon=0.0, top_p=0.4), {3}),                  # 0.5 alone reaches 0.4
    (dict(epsilon=0.0, top_p=0.7), {1, 3}),               # 0.5 + 0.3
    (dict(epsilon=0.0, top_p=0.9), {1, 3, 4}),            # 0.5 + 0.3 + 0.15
    (dict(epsilon=0.0, top_p=0.97), {0, 1, 3, 4}),
    (dict(epsilon=0.05, top_p=0.97), {1, 3, 4}),          # filters combine
])
def test_sampling_filters_keep_exactly_the_right_tokens(kwargs, support):
    """Reference: the support computed by hand from PROBS, observed over 4000 seeded samples."""
    assert set(draw(LOGITS, **kwargs).tolist()) == support


def test_epsilon_sampling_renormalises_the_kept_tokens():
    """Reference: PROBS restricted to p >= 0.05 and renormalised; frequencies of 20000 draws
    (standard error below 0.004)."""
    tokens = draw(LOGITS, n=20000, epsilon=0.05)
    frequencies = torch.bincount(tokens, minlength=5).float() / len(tokens)
    expected = torch.where(PROBS >= 0.05, PROBS, 0.0) / 0.95
    torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)


def test_most_likely_token_survives_when_every_p_is_below_epsilon():
    """Reference: argmax of the logits; with 97 near-uniform tokens every p < 0.05."""
    logits = 0.1 * torch.randn(8, 97)
    assert (F.softmax(logits, -1) < 0.05).all()
    for _ in range(20):
        assert torch.equal(sample_next_token(logits, temperature=1.0, epsilon=0.05), logits.argmax(-1, keepdim=True))


def test_temperature_zero_is_argmax():
    """Reference: torch.argmax, whatever the other filters say."""
    logits = torch.randn(6, 97)
    assert torch.equal(sample_next_token(logits, temperature=0.0, epsilon=0.5, top_k=3, top_p=0.1),
                       logits.argmax(-1, keepdim=True))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_epsilon_zero_is_plain_temperature_sampling(temperature):
    """Reference: torch.multinomial(softmax(logits / T)) under the same seed (the LUH contract)."""
    logits = 3 * torch.randn(64, 97)
    torch.manual_seed(99)
    tokens = sample_next_token(logits, temperature=temperature, epsilon=0.0)
    torch.manual_seed(99)
    expected = torch.multinomial(F.softmax(logits / temperature, dim=-1), num_samples=1)
    assert torch.equal(tokens, expected)


def test_generated_tokens_can_train_the_model():
    """generate runs under no_grad, not inference_mode: its output may feed a training step."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=16))
    tokens = model.generate(torch.randint(0, 50, (1, 3)), 4, temperature=0)
    logits, _ = model(tokens, targets=tokens)
    logits.sum().backward()
    assert model.tok_embeddings.weight.grad is not None


@pytest.mark.parametrize("bad", [dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_sample_next_token_rejects_bad_filters(bad):
    """top_k < 1 or top_p outside (0, 1] would keep nothing: a clear ValueError instead."""
    with pytest.raises(ValueError, match="top_"):
        sample_next_token(torch.randn(2, 10), **bad)
