"""
Mixout (Lee et al. 2020, "Mixout: Effective Regularization to Finetune Large-scale Pretrained
Language Models", https://arxiv.org/abs/1909.11299, Sec. 3).

Dropout replaces each unit by zero with probability p. Mixout replaces each *weight* by its
*pretrained value* u with probability p, and rescales so that the expected weight is the
fine-tuned one, w:

    mixed = M * w + (1 - M) * u                   M ~ Bernoulli(1 - p), one draw per element
    w~    = (mixed - p * u) / (1 - p)             E[w~] = ((1 - p) w + p u - p u) / (1 - p) = w

So a replaced element is exactly u, a kept one (w - p u) / (1 - p). Each step trains a random
mixture of the fine-tuned and the pretrained network; the paper shows this acts as an L2 pull
towards u (rather than towards 0, which is what dropout's pull is), which keeps fine-tuning a
large model on a small data set from drifting away. In eval mode w~ = w: the layer is a plain Linear.

`apply_mixout(model, p)` swaps every targeted nn.Linear for a MixoutLinear that keeps the same
`weight` Parameter (the parameter names, checkpoints and strict loading are unchanged) and a
frozen copy of the pretrained weight as a buffer that is not saved. Call it after loading the
pretrained weights and before training; `remove_mixout` turns the layers back into nn.Linear.
"""

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from support.adapters import PROJECTION_GROUPS, layers_of_type, wrap_children


def mixout(weight: torch.Tensor, pretrained: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """The mixed weight w~ (same shape as weight); `weight` itself when not training or p == 0."""
    if not training or p == 0.0:
        return weight
    keep = torch.empty_like(weight).bernoulli_(1.0 - p)  # 1: the fine-tuned value, 0: the pretrained one
    mixed = keep * weight + (1.0 - keep) * pretrained
    return (mixed - p * pretrained) / (1.0 - p)


class MixoutLinear(nn.Linear):
    """An nn.Linear (sharing the original's weight and bias) whose weight is mixed out in training."""

    def __init__(self, linear: nn.Linear, p: float):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"mixout probability must be in [0, 1), got {p}")
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: names and state unchanged
        self.p = p
        self.register_buffer("pretrained_weight", linear.weight.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, mixout(self.weight, self.pretrained_weight, self.p, self.training), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


def apply_mixout(model: nn.Module, p: float, targets: Sequence[str] = PROJECTION_GROUPS["all"]) -> nn.Module:
    """Mix out, in place, every nn.Linear named in `targets` (default: all attention and feed-forward
    projections; the tied embedding/output matrix and a new head have no pretrained value to mix
    with) towards its current weight. Returns `model`. requires_grad flags are untouched."""
    if layers_of_type(model, MixoutLinear):
        raise ValueError("apply_mixout: the model already has mixout layers")
    wrap_children(model, targets, lambda _, linear: MixoutLinear(linear, p), "apply_mixout")
    return model


def remove_mixout(model: nn.Module) -> nn.Module:
    """Replace every MixoutLinear by a plain nn.Linear with the same (fine-tuned) weight and bias."""
    for parent, name, layer in layers_of_type(model, MixoutLinear):
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        linear.weight, linear.bias = layer.weight, layer.bias
        setattr(parent, name, linear)
    return model
