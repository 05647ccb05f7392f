"""What every parameter-efficient method shares: which projections to adapt, counting, and the
adapter-only checkpoint (save the few trained tensors, load them strictly into a fresh model).

A method marks its trained tensors by a name prefix (`lora_A`, `ia3_scale`, `prompt_embeddings`),
so one function per job serves all of them: `count_parameters(model, "ia3_")`,
`adapter_state_dict(model, "ia3_", "apply_ia3")`, `load_adapter_state_dict(...)`. The adapter
checkpoint holds only those tensors; with the pretrained checkpoint it rebuilds the tuned model.
"""

from typing import NamedTuple, Sequence

import torch
import torch.nn as nn

# The linear projections of every layer: layers.{i}.attention.<name> and layers.{i}.feed_forward.<name>.
ATTENTION_PROJECTIONS = ("compute_query", "compute_key", "compute_value", "compute_output")
FEED_FORWARD_PROJECTIONS = ("w1", "w2", "w3")
PROJECTION_GROUPS = {"attention": ATTENTION_PROJECTIONS, "ffn": FEED_FORWARD_PROJECTIONS,
                     "all": ATTENTION_PROJECTIONS + FEED_FORWARD_PROJECTIONS}


def parse_targets(spec: str) -> tuple[str, ...]:
    """'attention', 'ffn', 'all', or a comma-separated mix of groups and projection names
    ('attention,w2', 'compute_query,compute_value') -> the projection names, in the model's order."""
    names = set()
    for word in (w.strip() for w in spec.split(",")):
        if word in PROJECTION_GROUPS:
            names.update(PROJECTION_GROUPS[word])
        elif word in PROJECTION_GROUPS["all"]:
            names.add(word)
        else:
            raise ValueError(f"unknown projection {word!r} in {spec!r}: use attention, ffn, all or some of "
                             f"{', '.join(PROJECTION_GROUPS['all'])}, separated by commas")
    return tuple(name for name in PROJECTION_GROUPS["all"] if name in names)


class ParameterCount(NamedTuple):
    """What the counting functions return. Tied weights (output / tok_embeddings) count once."""
    adapter: int    # numbers in the method's own tensors (its name prefix)
    trainable: int  # numbers with requires_grad: the adapters plus whatever the caller unfroze (a head)
    total: int      # every parameter of the model, frozen or not

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        line = f"trainable parameters: {self.trainable:,} of {self.total:,} ({100 * self.trainable_fraction:.3f}%)"
        return f"{line}, of which adapters: {self.adapter:,}" if self.adapter else line


def count_parameters(model: nn.Module, prefix: str | None = None) -> ParameterCount:
    """Count the model's parameters: the method's (names containing `prefix`; none without one),
    the trainable ones, all. A NamedTuple: unpacks as `adapter, trainable, total = ...`; `str()`
    of it is a line to print."""
    adapter = trainable = total = 0
    for name, p in model.named_parameters():  # named_parameters() yields a tied tensor once
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
        adapter += p.numel() if prefix is not None and prefix in name else 0
    return ParameterCount(adapter=adapter, trainable=trainable, total=total)


def adapter_parameters(model: nn.Module, prefix: str, apply_name: str) -> dict[str, nn.Parameter]:
    """{name: parameter} for the method's tensors; ValueError if there are none (not applied yet)."""
    params = {name: p for name, p in model.named_parameters() if prefix in name}
    if not params:
        raise ValueError(f"the model has no {prefix}* parameters; call {apply_name}(model) first")
    return params


def adapter_state_dict(model: nn.Module, prefix: str, apply_name: str) -> dict[str, torch.Tensor]:
    """Only the method's tensors, {name: tensor} under the model's own names, as detached copies:
    a snapshot (e.g. of the best dev epoch) that later training does not change."""
    return {name: p.detach().clone() for name, p in adapter_parameters(model, prefix, apply_name).items()}


def load_adapter_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str,
                            apply_name: str) -> nn.Module:
    """Copy tensors saved by `adapter_state_dict` into `model`, already prepared by the same
    `apply_name` call. Strict: the names must match exactly and every shape must agree; anything
    else raises ValueError naming the offending tensors. Returns `model`."""
    params = adapter_parameters(model, prefix, apply_name)
    missing = sorted(params.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(f"adapter names do not match the model; "
                         f"missing: {missing or 'none'}; unexpected: {unexpected or 'none'}")
    mismatched = [f"{name}: saved {tuple(state_dict[name].shape)}, model {tuple(p.shape)}"
                  for name, p in params.items() if state_dict[name].shape != p.shape]
    if mismatched:
        raise ValueError(f"adapter shapes do not match the model (built with other settings of "
                         f"{apply_name}?): " + "; ".join(mismatched))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state_dict[name])  # copy_ converts device and dtype
    return model


def layers_of_type(model: nn.Module, layer_type: type) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent module, attribute name, layer) for every `layer_type` module in `model`, as a list:
    callers replace them, and editing the module tree while iterating modules() is unsafe."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, layer_type)]


def freeze_all_but(model: nn.Module, prefix: str) -> None:
    """Only the method's tensors (names containing `prefix`) train; everything else is frozen."""
    for name, p in model.named_parameters():
        p.requires_grad_(prefix in name)


def wrap_children(model: nn.Module, targets: Sequence[str], wrap, method: str) -> list[nn.Module]:
    """Replace, in place, every nn.Linear child whose attribute name is in `targets` by wrap(linear);
    returns the new modules. Raises ValueError if a target matches no nn.Linear: a typo (or a model
    with other names, e.g. llama2.c's `wq`) would otherwise train nothing."""
    if isinstance(targets, str):  # a lone string would be taken letter by letter
        targets = (targets,)
    # collect first, then replace: editing the module tree while iterating modules() is unsafe
    found = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
             if name in targets and isinstance(child, nn.Linear)]
    missing = set(targets) - {name for _, name in found}
    if missing:
        raise ValueError(f"{method}: no nn.Linear named {sorted(missing)} in the model (targets: {list(targets)})")
    wrapped = []
    for parent, name in found:
        wrapped.append(wrap(name, getattr(parent, name)))
        setattr(parent, name, wrapped[-1])
    return wrapped
