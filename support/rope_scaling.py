"""Llama 3's long-context RoPE frequencies, carried to rope.py's table through `theta`.

Llama 3.1 and 3.2 were pre-trained at 8192 tokens and extended to 128k by rescaling RoPE's
frequencies (Meta's reference code, `apply_scaling`; Hugging Face's config.json calls it
`rope_scaling` with `rope_type: "llama3"`). The scaled table is all that changes: the rotation
itself (rope.apply_rotary_emb, whose signature is a contract) stays the same.
"""

import math

import torch

LLAMA3_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_rope_scaling(scaling) -> None:
    """Raise ValueError unless `scaling` is Llama 3's: {"rope_type": "llama3", factor, ...}."""
    if not isinstance(scaling, dict) or scaling.get("rope_type") != "llama3":
        raise ValueError(f"rope_scaling {scaling!r} is not supported (only rope_type 'llama3')")
    missing = [key for key in LLAMA3_SCALING_KEYS if key not in scaling]
    unknown = sorted(set(scaling) - {"rope_type", *LLAMA3_SCALING_KEYS})
    if missing or unknown:
        raise ValueError(f"rope_scaling {scaling!r}: " + "; ".join(
            [f"lacks {', '.join(missing)}"] * bool(missing) + [f"unknown key(s) {', '.join(unknown)}"] * bool(unknown)))
    if not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ValueError(f"rope_scaling {scaling!r}: high_freq_factor must exceed low_freq_factor")


class ScaledTheta(float):
    """RoPE's base theta that also carries Llama 3's frequency scaling (see llama3_frequencies).

    The RoPE contract hands the table only `theta`, so a model with scaled frequencies passes
    this float instead: precompute_freqs_cos_sin scales the frequencies, and code that uses it
    as a number sees theta. Equal (and cached) only with the same theta and the same scaling."""

    def __new__(cls, theta: float, scaling: dict):
        check_rope_scaling(scaling)
        value = super().__new__(cls, theta)
        value.scaling = tuple(float(scaling[key]) for key in LLAMA3_SCALING_KEYS)
        return value

    def __getnewargs__(self):  # copy.deepcopy and pickle rebuild it through __new__
        return float(self), {"rope_type": "llama3", **dict(zip(LLAMA3_SCALING_KEYS, self.scaling))}

    def __eq__(self, other):
        return isinstance(other, ScaledTheta) and (float(self), self.scaling) == (float(other), other.scaling)

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash((float(self), self.scaling))


def rope_base(theta: float, scaling: dict | None) -> float:
    """What a model passes as apply_rotary_emb's `theta`: the float, or a ScaledTheta."""
    return float(theta) if scaling is None else ScaledTheta(theta, scaling)


def llama3_frequencies(inv_freq: torch.Tensor, factor: float, low_freq_factor: float, high_freq_factor: float,
                       original_max_position_embeddings: float) -> torch.Tensor:
    """Llama 3.1's long-context RoPE (Meta's reference code, `apply_scaling`): stretch the slow
    rotations, keep the fast ones.

    A pair's wavelength is 2*pi / frequency tokens. Pairs that turn many times within the
    original context (wavelength below context / high_freq_factor) encode local order and are
    kept. Pairs that never complete a turn in it (wavelength above context / low_freq_factor)
    only ever saw angles up to the trained range, so their frequency is divided by `factor`:
    `factor` times longer texts then stay within those angles (position interpolation). In
    between, the two are blended linearly in context / wavelength."""
    wavelength = 2 * math.pi / inv_freq
    blend = (original_max_position_embeddings / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blend = blend.clamp(0.0, 1.0)  # 0: a slow pair, fully stretched; 1: a fast pair, unchanged
    return (1 - blend) * inv_freq / factor + blend * inv_freq
