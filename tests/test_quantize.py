"""Tests for quantize.py: the int8 and int4 layers against the float product and the bound their
rounding allows, each of their products (weight-only kernels, integer products, widened
weights) against the others, and quantised and bfloat16 models against the float32 model they
were built from."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from config import LlamaConfig
from llama import Llama
from minllama.inference import quantize
from minllama.inference.quantize import (DECODING_ROWS, Int4Linear, Int8Linear, dequantized_weight,
                                         prepare_for_inference, quantize_model, quantize_rows, two_digit_product)

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")

TINY = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, hidden_dim=96)
BF16_STEP = 2.0 ** -8  # bfloat16 keeps 8 significant bits: a value is off by at most half of this, relatively

# Quantised logits of a tiny random model differ from float32 by at most this fraction of the logits'
# standard deviation (measured: about 0.05 for int8, 0.3 for int4 here).
LOGIT_TOLERANCE = {"int8": 0.1, "int4": 0.6}


def test_quantize_rows_round_trip_is_within_half_a_step():
    x = torch.randn(7, 33) * torch.logspace(-3, 2, 7)[:, None]  # rows of very different scales
    q, scale = quantize_rows(x)
    assert q.dtype == torch.int8 and q.abs().max() == 127  # each row's largest entry maps to 127
    assert ((q.float() * scale - x).abs() <= scale / 2 + 1e-7 * x.abs()).all()


def weight_only_bound(x: torch.Tensor, weight: torch.Tensor, dequantized: torch.Tensor) -> torch.Tensor:
    """|x.w - bf16(bf16(x).w')| <= sum|x||w - w'| + sum|x||w'| step/2 + |x.w'| step/2 (+ the sums' rounding)."""
    x_abs = x.abs().reshape(-1, x.shape[-1])
    weight_error = x_abs @ (weight - dequantized).abs().t()
    input_rounding = x_abs @ dequantized.abs().t() * BF16_STEP / 2
    output_rounding = (x.reshape(-1, x.shape[-1]) @ dequantized.t()).abs() * BF16_STEP / 2
    return (weight_error + input_rounding + output_rounding) * 1.01 + 1e-4


def test_int8_linear_is_within_the_rounding_bound_of_the_float_product():
    """Many rows (a prompt): the float product of the widened weight, or the two-digit integer
    product; a few rows (decoding): the weight-only kernel, with bfloat16 activations."""
    linear = nn.Linear(48, 20, bias=False)
    weight = linear.weight.detach()
    layer = Int8Linear.from_linear(linear)
    dequantized = dequantized_weight(layer)
    assert ((dequantized - weight).abs() <= layer.weight_scale.view(-1, 1) / 2 + 1e-7).all()  # half a step
    for shape in ((3, 5, 48), (1, DECODING_ROWS, 48), (1, 1, 48)):
        x = torch.randn(shape)
        got, want = layer(x), F.linear(x, weight)
        assert got.shape == want.shape == (*shape[:-1], 20)
        if shape[1] > DECODING_ROWS:
            bound = x.abs() @ (weight - dequantized).abs().t() + 1e-5
        else:
            bound = weight_only_bound(x, weight, dequantized).view(got.shape)
        assert ((got - want).abs() <= bound).all(), shape
        assert (got - want).abs().max() > 0  # it did quantise


def test_the_two_digit_integer_product_is_within_its_bound():
    """_int_mm's path (used for prompts where the CPU has VNNI), called directly so that it is
    tested on every machine: |x.w - x'.w'| <= sum|x| dw + sum|w| dx + n dx dw, with dw half a
    weight step and dx half a step of the activations' second digit (1/254 of the first's)."""
    linear = nn.Linear(48, 20, bias=False)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(15, 48)
    got, want = two_digit_product(x, layer.weight_int8, layer.weight_scale), F.linear(x, linear.weight.detach())
    _, x_scale = quantize_rows(x)
    w_step, x_step = layer.weight_scale / 2, x_scale / 2 / 254  # (1, 20), (15, 1)
    w_abs = linear.weight.detach().abs().sum(-1)  # (20,)
    bound = x.abs().sum(-1, keepdim=True) * w_step + w_abs * x_step + 48 * x_step * w_step
    assert ((got - want).abs() <= bound + 1e-5).all()


@pytest.mark.parametrize("shape", [(48, 64), (20, 50), (100, 96)])
def test_int4_linear_is_within_the_rounding_bound_of_the_float_product(shape):
    """Every weight within half a step of its group; shapes the kernel does not take (20 rows,
    50 inputs: not whole groups of 32 nor a multiple of 16 rows) are padded and cut back."""
    out_features, in_features = shape
    linear = nn.Linear(in_features, out_features, bias=False)
    weight = linear.weight.detach()
    layer = Int4Linear.from_linear(linear)
    dequantized = dequantized_weight(layer)
    assert dequantized.shape == weight.shape
    padded = F.pad(weight, (0, -in_features % 32))
    groups = padded.view(out_features, -1, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / 15  # (out, groups)
    half_step = step.repeat_interleave(32, dim=1)[:, :in_features] / 2
    # the stored scale and zero are bfloat16: a weight may sit up to half a bfloat16 step further off
    assert ((dequantized - weight).abs() <= half_step * 1.01 + weight.abs().amax() * BF16_STEP).all()
    for rows in (1, DECODING_ROWS + 3):
        x = torch.randn(rows, in_features)
        got, want = layer(x), F.linear(x, weight)
        assert got.shape == want.shape
        assert ((got - want).abs() <= weight_only_bound(x, weight, dequantized)).all()


@pytest.mark.parametrize("kind", [Int8Linear, Int4Linear])
def test_concatenated_layers_compute_the_layers_side_by_side(kind):
    layers = [kind.from_linear(nn.Linear(64, n, bias=False)) for n in (128, 64, 64)]
    fused = kind.concat(layers)
    assert quantize.fusable(layers) and fused.out_features == 256
    for rows in (1, DECODING_ROWS + 1):
        x = torch.randn(rows, 64)
        assert torch.equal(fused(x), torch.cat([layer(x) for layer in layers], dim=-1))


def test_int4_layers_that_fill_part_of_a_packed_block_do_not_fuse():
    """torch packs int4 rows in blocks of 32 (AVX2) or 64 (AVX-512): 32 rows, or 20 padded to 32,
    would not stack on every CPU, and 16 rows stack on none."""
    layers = [Int4Linear.from_linear(nn.Linear(64, n, bias=False)) for n in (64, 32, 20, 16)]
    assert not quantize.fusable(layers[:2]) and not quantize.fusable(layers[1:3]) and not quantize.fusable(layers[::3])
    halves = [Int4Linear.from_linear(nn.Linear(64, 16, bias=False)) for _ in range(2)]
    x = torch.randn(1, 64)
    assert not torch.equal(Int4Linear.concat(halves)(x), torch.cat([half(x) for half in halves], dim=-1))
    assert not quantize.fusable([Int8Linear.from_linear(nn.Linear(64, 32, bias=False)), layers[0]])


@pytest.mark.parametrize("kind", [Int8Linear, Int4Linear])
def test_quantised_layers_keep_the_input_dtype_and_handle_empty_input(kind):
    layer = kind.from_linear(nn.Linear(32, 16, bias=False))
    assert layer(torch.randn(2, 32).bfloat16()).dtype == torch.bfloat16
    assert layer(torch.randn(0, 32)).shape == (0, 16)
    with pytest.raises(ValueError, match="bias-free"):
        kind.from_linear(nn.Linear(32, 16))


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_quantised_model_logits_stay_within_tolerance_of_float32(bits):
    model = Llama(LlamaConfig(**TINY)).eval()
    tokens = torch.randint(0, TINY["vocab_size"], (2, 20))
    with torch.no_grad():
        want, _ = model(tokens, targets=tokens)
        quantize_model(model, bits)
        got, _ = model(tokens, targets=tokens)
    assert not any(type(m) is nn.Linear for m in model.modules())
    kind = quantize.QUANTIZED_LINEARS[bits]
    assert sum(type(m) is kind for m in model.modules()) == 7 * TINY["n_layers"] + (bits == "int8")
    assert type(model.output) is Int8Linear  # under int4 too: the output layer keeps 8 bits
    difference = (got - want).abs().max() / want.std()
    assert 0 < difference < LOGIT_TOLERANCE[bits]


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_quantised_model_generates_with_the_cache_as_without(bits):
    model = quantize_model(Llama(LlamaConfig(**TINY)).eval(), bits)
    prompt = torch.randint(0, TINY["vocab_size"], (1, 6))
    cached = model.generate(prompt, 10, temperature=0.0)
    uncached = model.generate(prompt, 10, temperature=0.0, use_cache=False)
    assert torch.equal(cached, uncached)


def test_prepare_for_inference():
    model = Llama(LlamaConfig(**TINY)).eval()
    assert prepare_for_inference(model) is model and model.dtype == torch.float32  # the default: untouched
    assert prepare_for_inference(Llama(LlamaConfig(**TINY)), dtype="bfloat16").dtype == torch.bfloat16
    int4 = prepare_for_inference(Llama(LlamaConfig(**TINY)), quantize="int4")
    assert type(int4.layers[0].feed_forward.w2) is Int4Linear and type(int4.output) is Int8Linear
    for bad in (dict(dtype="float16"), dict(quantize="int3"), dict(dtype="bfloat16", quantize="int8")):
        with pytest.raises(ValueError):
            prepare_for_inference(Llama(LlamaConfig(**TINY)), **bad)


# Measured on SmolLM2 over DESIGN.md's generation prompt, every position: mean KL(float32 || quantised)
# 0.0061 nats for int8, 0.0024 for int4, the most likely token the same at 94% and 97% of the positions
# (SmolLM2's float32 is a dequantised 4-bit file: its groups are what int4 stores again, nearly exactly).
MEAN_KL = 0.02
SAME_ARGMAX = 0.9


@pytest.mark.slow
@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_real_weights_keep_their_next_token_distributions(bits, smollm2, smollm2_tokenizer):
    """SmolLM2 (real weights): at every position of a sentence, the quantised model's next-token
    distribution stays close to float32's, and mostly agrees on the most likely token."""
    import copy

    from minllama.cli.common import GENERATION_PROMPT

    tokens = torch.tensor([smollm2_tokenizer.encode(GENERATION_PROMPT, bos=True, eos=False)])
    with torch.inference_mode():
        want, _ = smollm2(tokens, targets=tokens)
        got, _ = quantize_model(copy.deepcopy(smollm2), bits)(tokens, targets=tokens)
    kl = F.kl_div(got.log_softmax(-1), want.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    same = (got.argmax(-1) == want.argmax(-1)).float().mean()
    print(f"{bits}: mean KL {kl.mean():.4f} nats, same argmax {same:.0%}")
    assert kl.mean() < MEAN_KL and same >= SAME_ARGMAX
