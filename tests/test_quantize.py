"""Tests for quantize.py: Int8Linear against the float product and the bound its rounding
allows, int8 and bfloat16 models against the float32 model they were built from."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from config import LlamaConfig
from llama import Llama
from minllama.inference.quantize import (Int8Linear, dequantized_weight, prepare_for_inference, quantize_int8,
                                         quantize_rows)

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")

TINY = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, hidden_dim=96)

# int8 logits of a tiny random model differ from float32 by at most this fraction of the logits'
# standard deviation (measured: about 0.05 here, 0.18 of a std on the stories42M shape is never seen).
LOGIT_TOLERANCE = 0.1


def test_quantize_rows_round_trip_is_within_half_a_step():
    x = torch.randn(7, 33) * torch.logspace(-3, 2, 7)[:, None]  # rows of very different scales
    q, scale = quantize_rows(x)
    assert q.dtype == torch.int8 and q.abs().max() == 127  # each row's largest entry maps to 127
    assert ((q.float() * scale - x).abs() <= scale / 2 + 1e-7 * x.abs()).all()


def test_int8_linear_is_within_the_rounding_bound_of_the_float_product():
    linear = nn.Linear(48, 20, bias=False)
    x = torch.randn(3, 5, 48)
    layer = Int8Linear(linear)
    got, want = layer(x), F.linear(x, linear.weight.detach())
    assert got.shape == want.shape == (3, 5, 20)
    # |x.w - x'.w'| <= sum|x| dw + sum|w| dx + n dx dw, with dw half a weight step and dx half a step
    # of the activations' second int8 digit (1/254 of the first's).
    _, x_scale = quantize_rows(x.reshape(-1, 48))
    w_step, x_step = layer.weight_scale / 2, x_scale.view(3, 5, 1) / 2 / 254  # (1, 20), (3, 5, 1)
    w_abs = linear.weight.detach().abs().sum(-1)  # (20,)
    bound = x.abs().sum(-1, keepdim=True) * w_step + w_abs * x_step + 48 * x_step * w_step
    assert ((got - want).abs() <= bound + 1e-5).all()
    assert (got - want).abs().max() > 0  # it did quantise


def test_int8_linear_keeps_the_input_dtype_and_handles_empty_input():
    layer = Int8Linear(nn.Linear(8, 4, bias=False))
    assert layer(torch.randn(2, 8).bfloat16()).dtype == torch.bfloat16
    assert layer(torch.randn(0, 8)).shape == (0, 4)
    with pytest.raises(ValueError, match="bias-free"):
        Int8Linear(nn.Linear(8, 4))


def test_dequantized_weight_is_close_to_the_original():
    linear = nn.Linear(16, 6, bias=False)
    weight = linear.weight.detach()
    error = (dequantized_weight(Int8Linear(linear)) - weight).abs()
    assert (error <= weight.abs().amax(-1, keepdim=True) / 127 / 2 + 1e-7).all()


def test_int8_model_logits_stay_within_tolerance_of_float32():
    model = Llama(LlamaConfig(**TINY)).eval()
    tokens = torch.randint(0, TINY["vocab_size"], (2, 20))
    with torch.no_grad():
        want, _ = model(tokens, targets=tokens)
        quantize_int8(model)
        got, _ = model(tokens, targets=tokens)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert sum(type(m) is Int8Linear for m in model.modules()) == 7 * TINY["n_layers"] + 1  # + output
    difference = (got - want).abs().max() / want.std()
    assert 0 < difference < LOGIT_TOLERANCE


def test_int8_model_generates_with_the_cache_as_without():
    model = quantize_int8(Llama(LlamaConfig(**TINY)).eval())
    prompt = torch.randint(0, TINY["vocab_size"], (1, 6))
    cached = model.generate(prompt, 10, temperature=0.0)
    uncached = model.generate(prompt, 10, temperature=0.0, use_cache=False)
    assert torch.equal(cached, uncached)


def test_prepare_for_inference():
    model = Llama(LlamaConfig(**TINY)).eval()
    assert prepare_for_inference(model) is model and model.dtype == torch.float32  # the default: untouched
    assert prepare_for_inference(Llama(LlamaConfig(**TINY)), dtype="bfloat16").dtype == torch.bfloat16
    for bad in (dict(dtype="float16"), dict(quantize="int4"), dict(dtype="bfloat16", quantize="int8")):
        with pytest.raises(ValueError):
            prepare_for_inference(Llama(LlamaConfig(**TINY)), **bad)
