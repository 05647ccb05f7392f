"""
LoRA: Low-Rank Adaptation of a pretrained model (Hu et al. 2021, https://arxiv.org/abs/2106.09685).

Full fine-tuning updates every weight matrix W (out, in) of the model. LoRA's observation
(Sec. 4.1) is that the *change* a task needs, dW, has a low "intrinsic rank", so it can be
written as the product of two thin matrices:

    W' = W + dW = W + (alpha / r) * B @ A        A: (r, in), B: (out, r), r << min(in, out)

W stays frozen; only A and B train. For one 512x512 projection at r = 4 that is
2 * 4 * 512 = 4,096 trainable numbers instead of 262,144 (1.6%).

Three details make it work:
- B starts at zero, so dW = 0 and training starts exactly from the pretrained model;
  A starts random (N(0, 0.02)) so that the gradient reaching B is not zero too.
- The update is scaled by alpha / r: changing the rank does not change the update's size,
  so one learning rate works across ranks (Sec. 4.1, "we simply set alpha to the first r we try").
- After training, B @ A can be added into W (`merge_lora_weights`): the deployed model is a
  plain model again, with no extra inference latency (Sec. 4.1, "No Additional Inference Latency").

Why the memory drops: frozen weights need no gradient buffers and, above all, no optimizer
state (AdamW keeps two extra tensors, m and v, per trained parameter, so full fine-tuning
holds roughly 4x the model: weights, grads, m, v). With LoRA only the adapters carry those.
Activations are still stored for the backward pass, so the saving is in parameters, not activations.

Typical use (what `run_llama.py --option lora` does):

    model = load_pretrained("stories42M.pt")           # load first: the checkpoint has plain names
    apply_lora(model, rank=4, alpha=1.0)               # wraps the attention projections, freezes the rest
    optimizer = AdamW(get_lora_optimizer_params(model), lr=...)
    ...train...
    torch.save(lora_state_dict(model), "adapters.pt")  # a few hundred KB instead of the whole model
    merge_lora_weights(model)                          # a plain Llama again, same outputs
"""

import math
from typing import Sequence

import torch
import torch.nn as nn

# ATTENTION_PROJECTIONS: the default targets (DESIGN.md, "LoRA contract"); parse_targets reads --lora_targets
from support.adapters import (ATTENTION_PROJECTIONS, ParameterCount, adapter_parameters, adapter_state_dict,
                              count_parameters, freeze_all_but, layers_of_type, load_adapter_state_dict, wrap_children)


class LoRALayer(nn.Module):
    """
    A frozen nn.Linear plus a trainable low-rank update:

        y = original_layer(x) + scaling * B(A(dropout(x)))        scaling = alpha / rank

    `lora_A` (rank, in) ~ N(0, 0.02) and `lora_B` (out, rank) = 0, so at creation the layer
    computes exactly what `original_layer` does. The original weight (and bias, if any) is frozen.
    `dropout` is applied to the adapter's input only (the frozen path sees x unchanged).
    """

    def __init__(self, original_layer: nn.Linear, rank: int = 4, alpha: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if isinstance(original_layer, LoRALayer):
            raise ValueError("LoRALayer: this layer already is a LoRALayer; "
                             "wrapping it twice would stack two adapters")
        if not isinstance(original_layer, nn.Linear):
            raise TypeError(f"LoRALayer wraps an nn.Linear, got {type(original_layer).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"LoRALayer: rank must be a positive integer, got {rank!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f"LoRALayer: alpha must be a finite number, got {alpha!r}")

        self.original_layer = original_layer
        self.original_layer.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank

        weight = original_layer.weight  # (out, in)
        out_features, in_features = weight.shape
        factory = dict(device=weight.device, dtype=weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **factory))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **factory))  # (out, r)
        nn.init.normal_(self.lora_A, mean=0.0, std=0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        x: (..., in) -> (..., out). The frozen path plus the scaled low-rank path, whose input
        goes through `self.dropout` first. Compute the low-rank path as two thin matmuls,
        (x A^T) B^T, never by forming B @ A (out, in): that would cost as much as the full
        weight and lose the point of the low rank.
        """
        # BEGIN SOLUTION
        frozen = self.original_layer(x)                          # (..., out)
        low_rank = self.dropout(x) @ self.lora_A.T               # (..., in) @ (in, r) -> (..., r)
        update = low_rank @ self.lora_B.T                        # (..., r) @ (r, out) -> (..., out)
        return frozen + self.scaling * update
        # END SOLUTION

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}"


def apply_lora(model: nn.Module, rank: int = 4, alpha: float = 1.0,
               targets: Sequence[str] = ATTENTION_PROJECTIONS, dropout: float = 0.0) -> nn.Module:
    """
    Wrap, in place, every nn.Linear whose attribute name is in `targets` (by default the four
    attention projections of every layer, as in the paper's Sec. 4.2 and upstream) in a
    LoRALayer, then freeze every other parameter of `model`. Returns `model`.

    Only the adapters train afterwards. If more should train, say a classifier head, the caller
    opts in explicitly, either by wrapping the backbone only

        apply_lora(classifier.llama, rank, alpha)                  # the head keeps its requires_grad

    or by unfreezing the head after wrapping the whole classifier

        apply_lora(classifier, rank, alpha); classifier.classifier_head.requires_grad_(True)

    Load pretrained weights *before* calling this: the wrapped model's state_dict names the
    frozen weight `...compute_query.original_layer.weight`, not the checkpoint's `...compute_query.weight`.

    Raises ValueError if `model` already has LoRA layers, or if a target name matches no nn.Linear
    (a typo or a model using other names, e.g. llama2.c's `wq`, would otherwise train nothing).
    """
    if layers_of_type(model, LoRALayer):
        raise ValueError("apply_lora: the model already has LoRA layers; merge_lora_weights(model) first "
                         "to add a new adapter on top of the merged weights")
    wrap_children(model, targets, lambda _, linear: LoRALayer(linear, rank=rank, alpha=alpha, dropout=dropout),
                  "apply_lora")
    freeze_all_but(model, "lora_")
    return model


def count_lora_parameters(model: nn.Module) -> ParameterCount:
    """
    Count the model's parameters: `ParameterCount(adapter, trainable, total)`, a NamedTuple
    (unpacks as `lora, trainable, total = ...`; `str()` of it is a one-line summary to print).
    """
    return count_parameters(model, "lora_")


def get_lora_optimizer_params(model: nn.Module) -> list[nn.Parameter]:
    """
    The adapter parameters (every parameter whose name contains `lora_`), as a list for the
    optimizer. Hand the optimizer only these, not model.parameters(): it then keeps no state
    for the frozen weights. Add the head's parameters yourself if it trains too.
    """
    return list(adapter_parameters(model, "lora_", "apply_lora").values())


def merge_lora_weights(model: nn.Module) -> nn.Module:
    """
    Replace, in place, every LoRALayer by its original nn.Linear, whose weight becomes
    W + scaling * B @ A (the bias is unchanged); the LoRALayer objects are used up.
    Returns `model`, which computes the same outputs (in eval mode; dropout aside) and whose
    state_dict has the original names again (`...compute_query.weight`), so it can be saved and
    loaded strictly like any pretrained checkpoint. requires_grad flags stay as they were (the
    merged projections stay frozen); call model.requires_grad_(True) to train the whole model further.
    """
    layers = layers_of_type(model, LoRALayer)
    if not layers:
        raise ValueError("merge_lora_weights: the model has no LoRA layers to merge")
    for parent, child_name, layer in layers:
        linear = layer.original_layer  # reused: no new allocation, no random init drawing from the RNG
        with torch.no_grad():
            # sum in float64, round once: the merged weight is as close to W + dW as its dtype allows
            delta = layer.scaling * (layer.lora_B.double() @ layer.lora_A.double())  # (out, r) @ (r, in)
            linear.weight.copy_(linear.weight.double() + delta)
        setattr(parent, child_name, linear)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """
    Only the adapter tensors, {name: tensor} with the model's own names
    (e.g. `layers.0.attention.compute_query.lora_A`): the small artefact that, together with
    the pretrained checkpoint, reproduces the fine-tuned model. The tensors are detached copies,
    so a snapshot (e.g. of the best dev epoch) is not changed by later training.
    It does not record alpha (the rank is in the shapes): save alpha alongside, and save a
    trained classifier head separately.
    """
    return adapter_state_dict(model, "lora_", "apply_lora")


def load_lora_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """
    Copy adapter tensors saved by `lora_state_dict` into `model`, which must already be wrapped
    by apply_lora with the same targets, rank and alpha. Strict: the names must match exactly
    and every shape must agree; anything else raises ValueError naming the offending tensors.
    Returns `model`.
    """
    return load_adapter_state_dict(model, state_dict, "lora_", "apply_lora")
