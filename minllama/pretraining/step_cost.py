"""What one training step of a model costs, counted before the first one runs, so that an absurd
--max_seq_len or --batch_size is refused (or warned about) in a second instead of after minutes of
a step that never finishes.

Per micro-step of B windows of T tokens through L layers of width d (hidden size h, vocabulary V),
in float32, for the backward pass:

    activations   ~ 4 bytes * B * T * (12 d + 3 h) * L     the layers' inputs and intermediate values
    logits        ~ 4 bytes * 3 * B * T * V                 the logits, their softmax and its gradient
    attention     ~ 4 bytes * 2 * B * n_heads * T^2 * L     scores and weights, unless fused
    work          ~ 6 * parameters * B * T + 12 * L * B * T^2 * d   floating-point operations

The fused kernel (config.fused_attention) never holds the T x T matrices, but still does the T^2
work: memory grows linearly with the context, time with its square.
"""

import os

import torch

from minllama.training.data import InputError

SLOW_STEP_FLOPS = 1e12  # a few seconds a step on a CPU at best: say so before the first one


def step_memory_bytes(config, window: int, micro_batch: int) -> int:
    activations = micro_batch * window * (12 * config.dim + 3 * config.ffn_hidden_dim) * config.n_layers
    logits = 3 * micro_batch * window * config.vocab_size
    attention = 0 if config.fused_attention else 2 * micro_batch * config.n_heads * window ** 2 * config.n_layers
    return 4 * (activations + logits + attention)


def step_flops(model, window: int, batch: int) -> float:
    config = model.config
    parameters = sum(p.numel() for p in model.parameters())
    return 6 * parameters * batch * window + 12 * config.n_layers * batch * window ** 2 * config.dim


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """The memory a step can use at most (the GPU's, else the machine's), or None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, "the GPU has"
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine has"
    return None


def check_step_cost(model, window: int, micro_batch: int, batch: int, device: torch.device) -> None:
    """Refuse a step that cannot fit in memory; warn about one that will take very long."""
    needed = step_memory_bytes(model.config, window, micro_batch)
    available = available_memory(device)
    if available is not None and needed > available[0]:
        raise InputError(f"--max_seq_len {window} with {micro_batch} windows per micro-step needs about "
                         f"{needed / 2**30:,.1f} GB for a training step; {available[1]} {available[0] / 2**30:.1f} GB: "
                         "choose a smaller --max_seq_len or --batch_size (or more --grad_accum)")
    flops = step_flops(model, window, batch)
    if device.type == "cpu" and flops > SLOW_STEP_FLOPS:
        print(f"warning: --max_seq_len {window} with --batch_size {batch}: a training step is about {flops:.1e} "
              f"floating-point operations and {needed / 2**30:,.1f} GB (attention's work grows with the square "
              "of --max_seq_len): expect a long wait for each step on this CPU")
