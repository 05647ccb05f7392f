"""Reading checkpoints into this repository's Llama, strictly.

Three file formats hold Llama weights, and `read_checkpoint` tells them apart by their
first bytes (a file name can lie; content cannot):

- PyTorch (`.pt`): a `torch.save` dict, as written by llama2.c's train.py and by this course:
  `{"model_args": {...}, "model": state_dict, ...}` (often with "optimizer", "iter_num", ...).
  torch.save writes a zip archive (bytes `PK\\x03\\x04`); very old files are a bare pickle
  (first byte 0x80, the pickle PROTO opcode). Parameter names are ours
  (`attention.compute_query`) or llama2.c's (`attention.wq`), maybe behind the `_orig_mod.`
  prefix that `torch.compile` adds.
- llama2.c `.bin` (export.py): raw little-endian float32 weights behind a tiny header, made
  for a C program to memory-map. v0 ("legacy_export") has no magic number; v1 starts with
  the magic 0x616b3432 ("ak42").
- GGUF (llama.cpp's format, magic `GGUF`): typed metadata key/values (hyper-parameters and
  the tokenizer) followed by possibly quantised tensors, read with the `gguf` package.

Every reader returns `(model_args, state_dict)`: `model_args` are LlamaConfig fields and the
state dict is float32 tensors in this repository's naming. `load_state_dict_strict` then puts
them into a built model, and names every tensor that is missing, unexpected or mis-shaped:
upstream loaded with strict=False, which silently left renamed modules random.
"""

import struct
from dataclasses import fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from config import LlamaConfig
from support.errors import CheckpointError
from support.rope_scaling import check_rope_scaling
from utils import require_file

LLAMA2C_MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32, the v1+ .bin header
GGUF_MAGIC = b"GGUF"


def read_checkpoint(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read any supported checkpoint file into (model_args, state_dict); see the module docstring.

    The state dict has float32 tensors named like `Llama.state_dict()`, except that
    `output.weight` is left out when it is tied to (equal to) `tok_embeddings.weight`.
    """
    path = Path(path) if Path(path).is_dir() else require_file(path)
    readers = {"torch": _read_torch, "llama2c": _read_llama2c, "gguf": _read_gguf, "hf": _read_hf}
    model_args, state_dict = readers[checkpoint_format(path)](path)
    try:
        LlamaConfig.from_dict(model_args)  # fail here, naming the file, rather than in the model
        if model_args.get("rope_scaling") is not None:
            check_rope_scaling(model_args["rope_scaling"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: its hyper-parameters do not make a valid LlamaConfig: {error}") from None
    return model_args, state_dict


def checkpoint_format(path) -> str:
    """'torch', 'llama2c' or 'gguf', from the first bytes of the file; 'hf' for a folder."""
    if Path(path).is_dir():
        return "hf"
    with open(path, "rb") as f:
        head = f.read(28)
    if head.startswith(GGUF_MAGIC):
        return "gguf"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"
    if len(head) >= 8 and struct.unpack("<I", head[:4])[0] == LLAMA2C_MAGIC:
        return "llama2c"
    if len(head) == 28 and _plausible_llama2c_v0_header(struct.unpack("<7i", head)):
        return "llama2c"
    raise CheckpointError(
        f"{path}: not a checkpoint this code can read (expected a torch.save file, "
        f"a llama2.c .bin export or a GGUF file; the file starts with {head[:8]!r})")


def _plausible_llama2c_v0_header(header) -> bool:
    """v0 files have no magic number, so a header is recognised by making sense as one."""
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = header
    sizes = (dim, hidden_dim, n_layers, n_heads, n_kv_heads, abs(vocab_size), seq_len)
    return (all(0 < size < 1 << 24 for size in sizes)
            and dim % n_heads == 0 and n_heads % n_kv_heads == 0 and (dim // n_heads) % 2 == 0)


# ---------------------------------------------------------------------------------------------
# PyTorch checkpoints

# llama2.c's attention names -> ours (the feed-forward and norm names are the same in both).
LLAMA2C_NAMES = {
    "attention.wq.": "attention.compute_query.",
    "attention.wk.": "attention.compute_key.",
    "attention.wv.": "attention.compute_value.",
    "attention.wo.": "attention.compute_output.",
}
COMPILED_PREFIX = "_orig_mod."  # torch.compile wraps the model; its state dict keeps the wrapper's prefix


def load_torch_file(path, mmap: bool = False):
    """The one way every `torch.save` file of this repository is read back (models, pre-training's
    last.pt, classification and instruction checkpoints, tokenizer records): onto the CPU, with
    weights_only (unpickle tensors and builtins only, never run code from the file), and a damaged
    file named in one line instead of a traceback from the zip reader."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # truncated zip, garbage pickle, disallowed objects: all unreadable
        raise CheckpointError(f"{path}: cannot read it as a PyTorch checkpoint "
                              f"(truncated or corrupt?): {type(error).__name__}: {error}") from None


def _read_torch(path: Path):
    checkpoint = load_torch_file(path)
    if not (isinstance(checkpoint, dict) and "model_args" in checkpoint and isinstance(checkpoint.get("model"), dict)):
        found = f"keys {list(checkpoint)[:5]}" if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}"
        raise CheckpointError(f"{path}: expected a dict with 'model_args' and a 'model' state dict "
                              f"(a bare state dict does not say the model's shape); found {found}")

    model_args = _config_fields(path, checkpoint["model_args"])
    state_dict = {}
    for name, tensor in checkpoint["model"].items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: model entry {name!r} is a {type(tensor).__name__}, not a tensor")
        new_name = name.removeprefix(COMPILED_PREFIX)
        for old, ours in LLAMA2C_NAMES.items():
            new_name = new_name.replace(old, ours)
        if new_name in state_dict:
            raise CheckpointError(f"{path}: tensor {new_name!r} appears twice (under two namings)")
        state_dict[new_name] = tensor.float()

    # llama2.c ties the classifier to the embedding, and a state dict lists a tied tensor under both names.
    output, embedding = state_dict.get("output.weight"), state_dict.get("tok_embeddings.weight")
    equal = output is not None and embedding is not None and output.shape == embedding.shape \
        and torch.equal(output, embedding)
    model_args.setdefault("tie_word_embeddings", output is None or equal)  # our own checkpoints say it
    if model_args["tie_word_embeddings"] and equal:
        del state_dict["output.weight"]
    return model_args, state_dict


def _config_fields(path: Path, args) -> dict:
    """A checkpoint's model_args as LlamaConfig fields (llama2.c says norm_eps for layer_norm_eps).
    An unknown key is an error: dropping it silently could build the wrong model."""
    if not isinstance(args, dict):
        raise CheckpointError(f"{path}: model_args is a {type(args).__name__}, expected a dict")
    renamed = {("layer_norm_eps" if key == "norm_eps" else key): value for key, value in args.items()}
    unknown = sorted(set(renamed) - {f.name for f in fields(LlamaConfig)})
    if unknown:
        raise CheckpointError(f"{path}: model_args has key(s) LlamaConfig does not know: {', '.join(unknown)}")
    return renamed


# ---------------------------------------------------------------------------------------------
# llama2.c .bin exports

def _read_llama2c(path: Path):
    """llama2.c's export.py, versions 0 and 1 (both float32, little-endian).

    v0 ("legacy_export"): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
    max_seq_len), a negative vocab_size meaning an unshared classifier. Then, each per-layer
    kind stacked over the layers: token embedding, attention norms, wq, wk, wv, wo, ffn norms,
    w1, w2, w3, final norm, the RoPE tables freq_cis_real and freq_cis_imag (max_seq_len x
    head_dim/2 each; we recompute RoPE, so they are skipped), then the classifier if unshared.

    v1 ("version1_export"): a 256-byte header: uint32 magic, int32 version, the same 7 int32,
    a uint8 shared-classifier flag, zero padding. Then norms first (attention, ffn, final),
    the embedding, wq, wk, wv, wo, w1, w2, w3, and the classifier if unshared; no RoPE tables.
    (v2 stores int8 Q8_0 weights, which we do not read.)

    The file size must be exactly what the header implies: shorter is a truncated download,
    longer means the header was not what we think.
    """
    with open(path, "rb") as f:
        head = f.read(256)
    if struct.unpack("<I", head[:4])[0] == LLAMA2C_MAGIC:
        version = struct.unpack("<i", head[4:8])[0]
        if version != 1:
            raise CheckpointError(f"{path}: llama2.c export version {version} is not supported "
                                  "(only the float32 versions 0 and 1; re-export with --version 1)")
        if len(head) < 37:
            raise CheckpointError(f"{path}: truncated: the 256-byte llama2.c v1 header is cut short")
        dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = struct.unpack("<7i", head[8:36])
        shared_classifier, header_bytes = bool(head[36]), 256
    else:
        dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = struct.unpack("<7i", head[:28])
        shared_classifier, vocab_size, header_bytes = vocab_size > 0, abs(vocab_size), 28

    head_dim, kv_dim = dim // n_heads, dim // n_heads * n_kv_heads

    def layer(name):
        return [f"layers.{i}.{name}.weight" for i in range(n_layers)]

    # (names, shape of each) in file order; None as the names marks a block we skip.
    norms = [(layer("attention_norm"), (dim,)), (layer("ffn_norm"), (dim,)), (["norm.weight"], (dim,))]
    embedding = [(["tok_embeddings.weight"], (vocab_size, dim))]
    matrices = [(layer("attention.compute_query"), (dim, dim)), (layer("attention.compute_key"), (kv_dim, dim)),
                (layer("attention.compute_value"), (kv_dim, dim)), (layer("attention.compute_output"), (dim, dim)),
                (layer("feed_forward.w1"), (hidden_dim, dim)), (layer("feed_forward.w2"), (dim, hidden_dim)),
                (layer("feed_forward.w3"), (hidden_dim, dim))]
    if header_bytes == 28:
        blocks = (embedding + [norms[0]] + matrices[:4] + [norms[1]] + matrices[4:] + [norms[2]]
                  + [(None, (2 * seq_len, head_dim // 2))])  # freq_cis_real and freq_cis_imag
    else:
        blocks = norms + embedding + matrices
    if not shared_classifier:
        blocks.append((["output.weight"], (vocab_size, dim)))

    counts = [len(names or [None]) * int(np.prod(shape)) for names, shape in blocks]
    expected, actual = header_bytes + 4 * sum(counts), path.stat().st_size
    if actual != expected:
        problem = "truncated" if actual < expected else f"{actual - expected} bytes longer than its header implies"
        raise CheckpointError(
            f"{path}: {problem}: a llama2.c export with dim={dim}, hidden_dim={hidden_dim}, n_layers={n_layers}, "
            f"n_heads={n_heads}, n_kv_heads={n_kv_heads}, vocab_size={vocab_size}, max_seq_len={seq_len} "
            f"needs {expected} bytes, the file has {actual}")

    weights = torch.from_numpy(np.fromfile(path, dtype="<f4", offset=header_bytes))  # one read, no loops over elements
    state_dict, start = {}, 0
    for (names, shape), count in zip(blocks, counts):
        if names is not None:
            stacked = weights[start:start + count].view(len(names), *shape)
            state_dict.update(zip(names, stacked.unbind(0)))
        start += count
    model_args = dict(dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                      vocab_size=vocab_size, max_seq_len=seq_len, tie_word_embeddings=shared_classifier)
    return model_args, state_dict


# ---------------------------------------------------------------------------------------------
# GGUF

# GGUF tensor names (llama.cpp's convention) -> ours. Per layer: blk.{i}.<name>.weight.
GGUF_LAYER_NAMES = {
    "attn_norm": "attention_norm",
    "attn_q": "attention.compute_query",
    "attn_k": "attention.compute_key",
    "attn_v": "attention.compute_value",
    "attn_output": "attention.compute_output",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "feed_forward.w1",  # the SiLU-gated branch
    "ffn_up": "feed_forward.w3",
    "ffn_down": "feed_forward.w2",
}
GGUF_MODEL_NAMES = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"}


@lru_cache(maxsize=1)
def _gguf_reader(path: str, mtime_ns: int):
    """GGUFReader parses all metadata up front (seconds for a 49k-token vocabulary) and the
    tensors need dequantising: gguf_cache keeps the decoded file on disk for the next run, and a
    run reads it twice (weights, then tokenizer), so keep the last one (keyed on path and mtime)."""
    from support.gguf_cache import cached_reader
    return cached_reader(path)


def open_gguf(path):
    """The fields and tensors of the GGUF file `path`, as a gguf.GGUFReader has them (with the
    tensors already float32; cached, see gguf_cache.py), or CheckpointError if it does not parse."""
    path = Path(path)
    try:
        return _gguf_reader(str(path.resolve()), path.stat().st_mtime_ns)
    except Exception as error:  # the reader fails on cut-short files with assorted numpy errors
        raise CheckpointError(f"{path}: cannot parse it as GGUF (truncated or corrupt?): "
                              f"{type(error).__name__}: {error}") from None


def gguf_metadata(reader, key: str, default=None):
    """The value of a GGUF metadata key as a Python value (str, int, float, bool or list)."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _read_gguf(path: Path):
    """A GGUF file (spec: github.com/ggml-org/ggml/blob/master/docs/gguf.md).

    Hyper-parameters are metadata keys prefixed by the architecture (`llama.embedding_length`,
    `llama.block_count`, ...); the vocabulary is the length of `tokenizer.ggml.tokens`.
    Tensor dims are listed like ggml's `ne`, fastest-varying first, i.e. reversed from PyTorch:
    a (out, in) nn.Linear weight is stored as [in, out]. Quantised types (Q4_1: blocks of 32
    4-bit values with a float16 scale and minimum) are dequantised to float32. llama.cpp's
    converter already permutes Q and K to the interleaved-pair RoPE layout we use, so they
    load as they are. No `output.weight` tensor means the classifier is tied to the embedding.
    """
    reader = open_gguf(path)
    arch = gguf_metadata(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")

    def required(key):
        value = gguf_metadata(reader, f"llama.{key}")
        if value is None:
            raise CheckpointError(f"{path}: GGUF metadata lacks llama.{key}")
        return value

    tokens = gguf_metadata(reader, "tokenizer.ggml.tokens")
    if tokens is None:
        raise CheckpointError(f"{path}: GGUF metadata lacks tokenizer.ggml.tokens (the vocabulary)")
    n_heads = required("attention.head_count")
    model_args = dict(
        vocab_size=len(tokens), dim=required("embedding_length"), n_layers=required("block_count"),
        n_heads=n_heads, n_kv_heads=gguf_metadata(reader, "llama.attention.head_count_kv", n_heads),
        hidden_dim=required("feed_forward_length"), max_seq_len=required("context_length"),
        layer_norm_eps=required("attention.layer_norm_rms_epsilon"),
        rope_theta=gguf_metadata(reader, "llama.rope.freq_base", 10000.0),
        tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors))
    rotary_dims = gguf_metadata(reader, "llama.rope.dimension_count")
    if rotary_dims is not None and rotary_dims != model_args["dim"] // n_heads:
        raise CheckpointError(f"{path}: RoPE on {rotary_dims} of {model_args['dim'] // n_heads} head dims "
                              "(partial rotary embeddings) is not supported")

    # open_gguf has dequantised the tensors to float32 in PyTorch's order (gguf_cache.py): only names change.
    state_dict = {_gguf_name(path, tensor.name): torch.from_numpy(tensor.data) for tensor in reader.tensors}
    return model_args, state_dict


def _gguf_name(path: Path, name: str) -> str:
    parts = name.split(".")  # "blk.3.attn_q.weight" or "token_embd.weight"
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in GGUF_LAYER_NAMES:
        return f"layers.{parts[1]}.{GGUF_LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in GGUF_MODEL_NAMES:
        return f"{GGUF_MODEL_NAMES[parts[0]]}.{parts[1]}"
    raise CheckpointError(f"{path}: unexpected GGUF tensor {name!r} (not part of a Llama model)")


def _read_hf(path: Path):
    from support.hf_checkpoint import read_hf_folder
    return read_hf_folder(path)


# ---------------------------------------------------------------------------------------------
# Loading into a model

def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source) -> None:
    """Copy `state_dict` into `model` (a built Llama), or raise CheckpointError naming `source`
    and every missing, unexpected and mis-shaped tensor, without changing the model.

    A model built on the meta device is given the tensors themselves (no copy).
    Two absences are fine: `output.weight` when the model ties it to the embedding (if given,
    it must equal `tok_embeddings.weight`), and LayerNorm biases, which stay zero: checkpoints
    trained with RMSNorm have none, and a zero bias makes LayerNorm what it was without one.
    """
    targets = model.state_dict()  # name -> tensor sharing the parameter's storage
    given = dict(state_dict)
    problems = []
    tied = model.output.weight is model.tok_embeddings.weight
    if tied:
        del targets["output.weight"]  # loaded through tok_embeddings.weight
        output, embedding = given.pop("output.weight", None), given.get("tok_embeddings.weight")
        if output is not None and embedding is not None and not (
                output.shape == embedding.shape and torch.equal(output, embedding)):
            problems.append("output.weight differs from tok_embeddings.weight, but the model ties them "
                            "(build it with tie_word_embeddings=False)")
    layernorm_biases = {f"{name}.bias" for name, module in model.named_modules()
                        if type(module).__name__ == "LayerNorm"}  # ours or torch's
    missing = [name for name in targets if name not in given and name not in layernorm_biases]
    unexpected = [name for name in given if name not in targets]
    misshaped = [f"{name} {tuple(given[name].shape)} (model: {tuple(target.shape)})"
                 for name, target in targets.items() if name in given and given[name].shape != target.shape]
    for kind, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if names:
            listed = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            problems.append(f"{kind}: {listed}")
    if problems:
        c = model.config
        raise CheckpointError(
            f"{source}: does not fit the model (dim={c.dim}, n_layers={c.n_layers}, n_heads={c.n_heads}, "
            f"n_kv_heads={c.n_kv_heads}, hidden_dim={c.ffn_hidden_dim}, vocab_size={c.vocab_size}): "
            + "; ".join(problems))

    if any(param.is_meta for param in model.parameters()):
        # Built on the meta device (no memory, no random initialisation): hand the model the tensors.
        complete = {name: given[name] if name in given else torch.zeros(target.shape)  # zeros: LayerNorm biases
                    for name, target in targets.items()}
        model.load_state_dict(complete, strict=False, assign=True)
        if tied:  # assigning replaced the shared Parameter in tok_embeddings only
            model.output.weight = model.tok_embeddings.weight
        return
    with torch.no_grad():
        for name, target in targets.items():
            if name in given:
                target.copy_(given[name])
            else:  # a LayerNorm bias the checkpoint does not have
                target.zero_()
