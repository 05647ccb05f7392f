"""Rotary position embeddings (RoPE; Su et al. 2021, "RoFormer", Sec. 3.4).

Instead of adding a position vector to the input, RoPE rotates every query and key. The
head dimension is split into pairs (x[2i], x[2i+1]); the pair at position p is rotated
by the angle p * theta**(-2i/head_dim). A dot product of two rotated vectors depends on
their positions only through the difference m - n, so attention sees relative positions.
Early pairs spin fast (they see fine detail), late pairs slowly (they see long range).

The interleaved-pair layout is the one of Meta's and llama2.c's checkpoints. We use real
cos/sin tables rather than complex numbers: complex tensors break torch.compile, ONNX
export and Apple's MPS backend.
"""

from functools import lru_cache

import torch

from support.rope_scaling import ScaledTheta, llama3_frequencies


@lru_cache(maxsize=16)
def precompute_freqs_cos_sin(head_dim: int, max_seq_len: int, theta: float = 10000.0,
                             device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every rotation angle, each (max_seq_len, head_dim // 2), float32.

    The table depends only on these numbers, so it is computed once and cached. A ScaledTheta
    `theta` scales the frequencies as Llama 3 does."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim)
    if isinstance(theta, ScaledTheta):
        inv_freq = llama3_frequencies(inv_freq, *theta.scaling)
    positions = torch.arange(max_seq_len, device=device).float()
    angles = torch.outer(positions, inv_freq)  # (max_seq_len, head_dim // 2)
    return torch.cos(angles), torch.sin(angles)


def reshape_for_broadcast(freqs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a (T, head_dim//2) or (B, T, head_dim//2) table so it broadcasts against
    x of shape (B, T, heads, head_dim//2): a singleton axis is added for the heads."""
    if freqs.dim() == 2:
        assert freqs.shape == (x.shape[1], x.shape[-1]), f"table {tuple(freqs.shape)} does not fit {tuple(x.shape)}"
        return freqs.view(1, x.shape[1], 1, x.shape[-1])
    assert freqs.shape == (x.shape[0], x.shape[1], x.shape[-1]), f"table {tuple(freqs.shape)} does not fit {tuple(x.shape)}"
    return freqs.unsqueeze(2)


def apply_rotary_emb(query: torch.Tensor, key: torch.Tensor, head_dim: int, max_seq_len: int,
                     theta: float = 10000.0, positions: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query (B, T, n_heads, head_dim) and key (B, T, n_kv_heads, head_dim).

    `positions` gives each token's position: None means 0..T-1 (T beyond max_seq_len is a
    ValueError); a (T,) tensor is shared by the batch; a (B, T) tensor gives every row its own
    (left-padded rows start later). Look the angles' cos and sin up at those positions in
    precompute_freqs_cos_sin's tables, view them with reshape_for_broadcast, and rotate every
    pair (x[2i], x[2i+1]) by [[cos, -sin], [sin, cos]], in float32.
    Returns the rotated (query, key) with the input shapes and dtype.
    """
    # BEGIN SOLUTION
    T = query.shape[1]
    if positions is None:
        if T > max_seq_len:
            raise ValueError(f"sequence length {T} is beyond max_seq_len {max_seq_len}")
        positions = torch.arange(T, device=query.device)
    cos_table, sin_table = precompute_freqs_cos_sin(head_dim, max_seq_len, theta, query.device)
    cos, sin = cos_table[positions], sin_table[positions]  # (T, head_dim//2) or (B, T, head_dim//2)

    # Query and key heads get the same rotation: rotate them as one tensor (half the small
    # operations, which is what a one-token generation step spends its time on).
    n_heads = query.shape[2]
    x = torch.cat((query, key), dim=2)  # (B, T, n_heads + n_kv_heads, head_dim)
    # Split the last axis into pairs: x_even = x[..., 0::2], x_odd = x[..., 1::2].
    x_even, x_odd = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # each (B, T, heads, head_dim//2)
    c, s = reshape_for_broadcast(cos, x_even), reshape_for_broadcast(sin, x_even)
    # The 2-D rotation [[c, -s], [s, c]] applied to every pair.
    rotated = torch.stack((x_even * c - x_odd * s, x_even * s + x_odd * c), dim=-1)
    rotated = rotated.flatten(-2).type_as(query)
    return rotated[:, :, :n_heads], rotated[:, :, n_heads:]
    # END SOLUTION
