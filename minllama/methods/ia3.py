"""
IA3: Infused Adapter by Inhibiting and Amplifying Inner Activations (Liu et al. 2022, "Few-Shot
Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning", Sec. 3.3,
https://arxiv.org/abs/2205.05638).

Instead of adding a low-rank update to a weight (LoRA), IA3 learns one vector per adapted
activation and multiplies the activation by it, element by element:

    keys    k = l_k * (W_k x)                 l_k: (n_kv_heads * head_dim,)
    values  v = l_v * (W_v x)                 l_v: (n_kv_heads * head_dim,)
    FFN     y = W_2 (l_ff * silu(W_1 x) * W_3 x)    l_ff: (hidden_dim,), the input of w2

The vectors start at ones, so training starts exactly from the pretrained model, and each entry
can only amplify (> 1) or inhibit (< 1) one feature. That is very few numbers: for stories42M
(8 layers, dim 512, hidden 1376) 8 * (512 + 512 + 1376) = 19,200, about 7x fewer than LoRA at rank 4 (131,072).

A scaled output row is a scaled weight row, and a scaled input column is a scaled weight
column, so after training the vectors fold into the weights (`merge_ia3_weights`): W_k' =
diag(l_k) W_k, W_2' = W_2 diag(l_ff). The deployed model is a plain model with the same outputs.
The keys are scaled before RoPE (the output of compute_key), which is what makes the fold exact.

    apply_ia3(model.llama)                   # wraps compute_key, compute_value, w2; freezes the rest
    ...train (the head outside model.llama keeps training)...
    torch.save(ia3_state_dict(model.llama), "ia3.pt")
    merge_ia3_weights(model.llama)           # a plain Llama again
"""

import torch
import torch.nn as nn

from support.adapters import (ParameterCount, adapter_parameters, adapter_state_dict, count_parameters, freeze_all_but,
                              layers_of_type, load_adapter_state_dict, wrap_children)

# Which activation IA3 scales for each projection (Sec. 3.3): the output of the key and value
# projections, the input of the feed-forward's down projection.
IA3_TARGETS = {"compute_key": "output", "compute_value": "output", "w2": "input"}


class IA3Layer(nn.Module):
    """
    A frozen nn.Linear whose output (side "output": y = l * (W x)) or input (side "input":
    y = W (l * x)) is scaled element-wise by a trainable vector `ia3_scale`, initialised to ones.
    """

    def __init__(self, original_layer: nn.Linear, side: str):
        super().__init__()
        if isinstance(original_layer, IA3Layer):
            raise ValueError("IA3Layer: this layer already is an IA3Layer; wrapping it twice would stack two vectors")
        if not isinstance(original_layer, nn.Linear):
            raise TypeError(f"IA3Layer wraps an nn.Linear, got {type(original_layer).__name__}")
        if side not in ("output", "input"):
            raise ValueError(f"IA3Layer: side must be 'output' or 'input', got {side!r}")
        self.original_layer = original_layer.requires_grad_(False)
        self.side = side
        weight = original_layer.weight  # (out, in)
        size = weight.shape[0] if side == "output" else weight.shape[1]
        self.ia3_scale = nn.Parameter(torch.ones(size, device=weight.device, dtype=weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out): the frozen layer with `ia3_scale` multiplied in element-wise,
        on its input for side "input" (W (l * x)), on its output for side "output" (l * (W x)).
        A vector costs one number per feature, and at ones the layer is exactly the original."""
        # BEGIN SOLUTION
        if self.side == "input":
            return self.original_layer(x * self.ia3_scale)
        return self.original_layer(x) * self.ia3_scale  # a bias, if any, is scaled too: the fold keeps that
        # END SOLUTION

    def extra_repr(self) -> str:
        return f"side={self.side}"


def apply_ia3(model: nn.Module, targets: dict[str, str] = IA3_TARGETS) -> nn.Module:
    """
    Wrap, in place, every nn.Linear named in `targets` ({name: "output" or "input"}; by default
    the paper's keys, values and feed-forward inner activation) in an IA3Layer, then freeze every
    other parameter of `model`. Returns `model`. As with apply_lora, wrap the backbone
    (`classifier.llama`) to keep a classifier head training, and load pretrained weights first.
    """
    if layers_of_type(model, IA3Layer):
        raise ValueError("apply_ia3: the model already has IA3 layers; merge_ia3_weights(model) first")
    wrap_children(model, tuple(targets), lambda name, linear: IA3Layer(linear, targets[name]), "apply_ia3")
    freeze_all_but(model, "ia3_")
    return model


def count_ia3_parameters(model: nn.Module) -> ParameterCount:
    """ParameterCount(adapter, trainable, total): the IA3 vectors, what trains, everything."""
    return count_parameters(model, "ia3_")


def get_ia3_optimizer_params(model: nn.Module) -> list[nn.Parameter]:
    """The IA3 vectors, for the optimizer (add a head's parameters yourself)."""
    return list(adapter_parameters(model, "ia3_", "apply_ia3").values())


def merge_ia3_weights(model: nn.Module) -> nn.Module:
    """
    Replace, in place, every IA3Layer by its original nn.Linear with the vector folded in:
    output side scales the weight's rows (and the bias), input side its columns. Returns `model`,
    which computes the same outputs and has the checkpoint's parameter names again.

    For each (parent, child_name, layer) of layers_of_type(model, IA3Layer): l * (W x) = (l W) x
    multiplies row i of W (and bias i) by l_i; W (l * x) = (W l) x column j by l_j. Scale
    layer.original_layer's tensors in place, without gradients, and put it back with setattr.
    """
    layers = layers_of_type(model, IA3Layer)
    if not layers:
        raise ValueError("merge_ia3_weights: the model has no IA3 layers to merge")
    # BEGIN SOLUTION
    for parent, child_name, layer in layers:
        linear, scale = layer.original_layer, layer.ia3_scale.detach()
        with torch.no_grad():
            if layer.side == "output":
                linear.weight.mul_(scale[:, None])  # (out, in) * (out, 1): row i times l_i
                if linear.bias is not None:
                    linear.bias.mul_(scale)
            else:
                linear.weight.mul_(scale[None, :])  # (out, in) * (1, in): column j times l_j
        setattr(parent, child_name, linear)
    return model
    # END SOLUTION


def ia3_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the IA3 vectors (`layers.0.attention.compute_key.ia3_scale`, ...), as detached copies."""
    return adapter_state_dict(model, "ia3_", "apply_ia3")


def load_ia3_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Copy vectors saved by ia3_state_dict into a model prepared by apply_ia3; strict on names and shapes."""
    return load_adapter_state_dict(model, state_dict, "ia3_", "apply_ia3")
