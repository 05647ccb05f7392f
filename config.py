"""The hyper-parameters of a Llama model, and nothing else.

The defaults describe stories42M, the 42M-parameter TinyStories model the assignment uses.
"""

from dataclasses import asdict, dataclass, fields

# The shapes of llama2.c's TinyStories models (karpathy/tinyllamas), for --preset. The vocabulary
# size is the tokenizer's, so it is not part of a preset.
PRESETS = {
    "stories260K": {"dim": 64, "n_layers": 5, "n_heads": 8, "n_kv_heads": 4, "max_seq_len": 512, "multiple_of": 4},
    "stories15M": {"dim": 288, "n_layers": 6, "n_heads": 6, "n_kv_heads": 6, "max_seq_len": 256},
    "stories42M": {"dim": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 8, "max_seq_len": 1024},
    "stories110M": {"dim": 768, "n_layers": 12, "n_heads": 12, "n_kv_heads": 12, "max_seq_len": 1024},
}

# The pre-training ablations and their choices, Llama 2's first (see architectures.py).
ARCHITECTURE_CHOICES = {"positional": ("rope", "alibi", "none"), "ffn": ("swiglu", "gelu"),
                        "attention": ("softmax", "differential")}

# llama2.c's `model_args` use these names for some of our fields.
_ALIASES = {"norm_eps": "layer_norm_eps"}


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    dim: int = 512
    dropout: float = 0.0
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int | None = 8  # None means n_heads (plain multi-head attention)
    max_seq_len: int = 1024
    layer_norm_eps: float = 1e-5
    multiple_of: int = 32  # the FFN hidden size is rounded up to a multiple of this
    hidden_dim: int | None = None  # None: derived from dim, see ffn_hidden_dim
    norm_type: str = "rmsnorm"  # "rmsnorm" (Llama 2) or "layernorm" (the 2025 CMU variant)
    rope_theta: float = 10000.0  # SmolLM2 uses 100000
    rope_scaling: dict | None = None  # Llama 3's long-context frequencies: {"rope_type": "llama3", ...}, see rope_scaling.py
    tie_word_embeddings: bool = True  # output.weight is tok_embeddings.weight
    fused_attention: bool = True  # F.scaled_dot_product_attention instead of the explicit softmax
    # Pre-training ablations (architectures.py); the defaults are Llama 2's own choices.
    positional: str = "rope"  # "rope", "alibi" (Press et al. 2022) or "none" (the causal mask alone)
    ffn: str = "swiglu"  # "swiglu", or "gelu": the original transformer's two-matrix feed-forward
    attention: str = "softmax"  # "softmax", or "differential" (Ye et al. 2024)

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.norm_type not in ("rmsnorm", "layernorm"):
            raise ValueError(f"norm_type must be 'rmsnorm' or 'layernorm', got {self.norm_type!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head_dim {self.dim // self.n_heads} must be even for rotary embeddings")
        for name, allowed in ARCHITECTURE_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.attention == "differential":
            if self.positional != "rope":
                raise ValueError("differential attention is built with rotary embeddings (positional 'rope')")
            if self.n_heads % 2 or self.n_kv_heads % 2:
                raise ValueError(f"differential attention pairs heads: n_heads {self.n_heads} and "
                                 f"n_kv_heads {self.n_kv_heads} must be even")

    def architecture_changes(self) -> dict:
        """The ablations this model makes to Llama 2 ({} for a plain Llama): the fields of
        ARCHITECTURE_CHOICES that differ from their default, the first choice."""
        return {name: getattr(self, name) for name, allowed in ARCHITECTURE_CHOICES.items()
                if getattr(self, name) != allowed[0]}

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU has three matrices instead of two, so Llama shrinks the usual 4*dim hidden
        size to 2/3 of it to keep the parameter count (Shazeer 2020, Sec. 2), then rounds up
        to a multiple of `multiple_of` for efficient kernels: 1376 for dim 512."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * 4 * self.dim / 3)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_dict(cls, args: dict) -> "LlamaConfig":
        """Build a config from a checkpoint's `model_args`, accepting llama2.c's key names.
        An unknown key is an error: silently dropping one would build the wrong model."""
        known = {f.name for f in fields(cls)}
        both = [f"{alias}/{name}" for alias, name in _ALIASES.items() if alias in args and name in args]
        if both:
            raise ValueError(f"both spellings of one field given: {', '.join(both)}")
        renamed = {_ALIASES.get(key, key): value for key, value in args.items()}
        unknown = sorted(set(renamed) - known)
        if unknown:
            raise ValueError(f"unknown LlamaConfig field(s): {', '.join(unknown)}")
        return cls(**renamed)

    def to_dict(self) -> dict:
        """Plain builtins only, so `torch.load(..., weights_only=True)` can read it back."""
        return asdict(self)
