"""Hugging Face Llama folders, in and out.

A folder as `transformers`' `save_pretrained` writes it (and the Hub serves it):

- `config.json`: the hyper-parameters under Hugging Face's names (`hidden_size`,
  `num_key_value_heads`, `rope_theta`, ...), `architectures` (we read `LlamaForCausalLM`) and the
  weights' dtype (`torch_dtype`, or `dtype` since transformers 5).
- the weights in safetensors files: one `model.safetensors`, or shards listed by
  `model.safetensors.index.json` (`weight_map`: tensor name -> shard file). A safetensors file
  is a JSON header (names, dtypes, shapes, byte offsets) and the raw little-endian tensors.
- `tokenizer.json` (the `tokenizers` library's whole pipeline) with `tokenizer_config.json`
  (special tokens, `add_bos_token`, `chat_template`); see hf_tokenizer.py.

Two conventions differ from ours. Names: `model.layers.3.self_attn.q_proj.weight` for our
`layers.3.attention.compute_query.weight`. And RoPE's pairs: Meta's checkpoints (and ours)
rotate interleaved pairs (x[2i], x[2i+1]), Hugging Face rotates the two halves of each head
(x[i], x[i + head_dim/2]). Its converter therefore permuted the rows of q_proj and k_proj
within every head, so that the same weights compute the same attention; we undo that
permutation on reading and redo it on writing.
"""

import json
import os
import shutil
from pathlib import Path

import torch

from config import LlamaConfig
from support.errors import CheckpointError

CONFIG = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX = "model.safetensors.index.json"
ARCHITECTURE = "LlamaForCausalLM"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Hugging Face's names -> ours. Per layer: model.layers.{i}.<name>.weight.
HF_LAYER_NAMES = {
    "input_layernorm": "attention_norm",
    "self_attn.q_proj": "attention.compute_query",
    "self_attn.k_proj": "attention.compute_key",
    "self_attn.v_proj": "attention.compute_value",
    "self_attn.o_proj": "attention.compute_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.up_proj": "feed_forward.w3",
    "mlp.down_proj": "feed_forward.w2",
}
HF_MODEL_NAMES = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
                  "lm_head.weight": "output.weight"}


def is_hf_folder(path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


# ---------------------------------------------------------------------------------------------
# Reading

def read_hf_folder(folder) -> tuple[dict, dict[str, torch.Tensor]]:
    """(model_args, state_dict) of a Hugging Face Llama folder, as checkpoints.read_checkpoint
    returns them: LlamaConfig fields, float32 tensors in our naming and RoPE layout."""
    folder = Path(folder)
    config = read_json(folder / CONFIG)
    model_args = model_args_from_hf_config(folder / CONFIG, config)
    hf_tensors = _read_safetensors(folder)
    _check_shapes(folder, model_args, hf_tensors)

    head_dim = model_args["dim"] // model_args["n_heads"]
    state_dict = {}
    for hf_name, tensor in hf_tensors.items():
        name = _our_name(hf_name)
        if name.endswith("compute_query.weight"):
            tensor = interleave_rope_rows(tensor, model_args["n_heads"], head_dim)
        elif name.endswith("compute_key.weight"):
            tensor = interleave_rope_rows(tensor, model_args["n_kv_heads"], head_dim)
        state_dict[name] = tensor
    if model_args["tie_word_embeddings"]:
        state_dict.pop("output.weight", None)  # a tied lm_head is the embedding; some files repeat it
    return model_args, state_dict


def read_json(path: Path):
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: a Hugging Face folder needs {path.name}, which is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON: {error}") from None


def model_args_from_hf_config(path: Path, config: dict) -> dict:
    """LlamaConfig fields from a config.json, or CheckpointError naming what we cannot build."""
    architectures = config.get("architectures") or []
    if architectures != [ARCHITECTURE]:
        raise CheckpointError(f"{path}: architectures {architectures} is not supported (only [{ARCHITECTURE!r}])")
    dtype = config.get("torch_dtype", config.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise CheckpointError(f"{path}: dtype {dtype!r} is not supported (only {', '.join(DTYPES)})")
    for key, ours in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if config.get(key, ours) != ours:
            raise CheckpointError(f"{path}: {key}={config[key]!r} is not supported (only {ours!r})")
    try:
        dim, n_heads = config["hidden_size"], config["num_attention_heads"]
        model_args = dict(
            vocab_size=config["vocab_size"], dim=dim, n_layers=config["num_hidden_layers"], n_heads=n_heads,
            n_kv_heads=config.get("num_key_value_heads") or n_heads, hidden_dim=config["intermediate_size"],
            max_seq_len=config["max_position_embeddings"], layer_norm_eps=config.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=config.get("tie_word_embeddings", True))
    except KeyError as error:
        raise CheckpointError(f"{path}: lacks {error.args[0]!r}") from None
    if config.get("head_dim", dim // n_heads) != dim // n_heads:
        raise CheckpointError(f"{path}: head_dim {config['head_dim']} is not hidden_size / num_attention_heads "
                              f"({dim // n_heads}); such models are not supported")
    # transformers 5 writes rope_parameters {"rope_type", "rope_theta", ...}; older files rope_theta and
    # rope_scaling (whose type is "rope_type", or "type" in the oldest).
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    model_args["rope_theta"] = float(rope.pop("rope_theta", config.get("rope_theta", 10000.0)))
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if rope_type == "llama3":
        model_args["rope_scaling"] = {"rope_type": "llama3", **rope}
    elif rope_type != "default":
        raise CheckpointError(f"{path}: RoPE type {rope_type!r} is not supported (only the default and 'llama3')")
    try:
        LlamaConfig.from_dict(model_args)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: these hyper-parameters do not make a valid LlamaConfig: {error}") from None
    return model_args


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder, as float32, after checking that every file is there."""
    from safetensors import SafetensorError, safe_open

    if (folder / INDEX).is_file():
        weight_map = read_json(folder / INDEX).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{folder / INDEX}: lacks its 'weight_map' (tensor name -> shard file)")
        shards = sorted(set(weight_map.values()))
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            raise CheckpointError(f"{folder}: missing shard(s) {', '.join(missing)}, listed in {INDEX}")
    elif (folder / SINGLE_FILE).is_file():
        weight_map, shards = None, [SINGLE_FILE]
    else:
        raise CheckpointError(f"{folder}: no weights: expected {SINGLE_FILE}, or shards listed in {INDEX}")

    tensors = {}
    for shard in shards:
        try:
            with safe_open(folder / shard, framework="pt") as f:
                for name in f.keys():
                    if weight_map is not None and weight_map.get(name) != shard:
                        raise CheckpointError(f"{folder / shard}: holds {name!r}, which {INDEX} puts in "
                                              f"{weight_map.get(name)}")
                    tensor = f.get_tensor(name)
                    if tensor.dtype not in DTYPES.values():
                        raise CheckpointError(f"{folder / shard}: tensor {name!r} is {tensor.dtype}; only "
                                              "float32, float16 and bfloat16 weights are supported")
                    tensors[name] = tensor.float()
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{folder / shard}: cannot read it as safetensors (truncated or corrupt?): "
                                  f"{error}") from None
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise CheckpointError(f"{folder}: {INDEX} lists tensor(s) no shard holds: {', '.join(absent[:6])}")
    return tensors


def hf_shapes(model_args: dict) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a Hugging Face Llama with these hyper-parameters has."""
    c = LlamaConfig.from_dict(model_args)
    kv_dim = c.n_kv_heads * c.head_dim
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.dim), "model.norm.weight": (c.dim,)}
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.dim)
    per_layer = {"input_layernorm": (c.dim,), "post_attention_layernorm": (c.dim,),
                 "self_attn.q_proj": (c.dim, c.dim), "self_attn.k_proj": (kv_dim, c.dim),
                 "self_attn.v_proj": (kv_dim, c.dim), "self_attn.o_proj": (c.dim, c.dim),
                 "mlp.gate_proj": (c.ffn_hidden_dim, c.dim), "mlp.up_proj": (c.ffn_hidden_dim, c.dim),
                 "mlp.down_proj": (c.dim, c.ffn_hidden_dim)}
    for i in range(c.n_layers):
        shapes.update({f"model.layers.{i}.{name}.weight": shape for name, shape in per_layer.items()})
    return shapes


def _check_shapes(folder: Path, model_args: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Name every tensor that config.json does not predict, or predicts with another shape."""
    expected = hf_shapes(model_args)
    if model_args["tie_word_embeddings"]:
        expected.setdefault("lm_head.weight", expected["model.embed_tokens.weight"])  # a repeated tied copy
        optional = {"lm_head.weight"}
    else:
        optional = set()
    problems = []
    missing = [name for name in expected if name not in tensors and name not in optional]
    unexpected = [name for name in tensors if name not in expected]
    misshaped = [f"{name} {tuple(tensors[name].shape)} (config.json: {shape})"
                 for name, shape in expected.items() if name in tensors and tuple(tensors[name].shape) != shape]
    for kind, names in (("missing", missing), ("unexpected", unexpected),
                        ("shape disagrees with config.json", misshaped)):
        if names:
            more = f" and {len(names) - 6} more" if len(names) > 6 else ""
            problems.append(f"{kind}: " + ", ".join(names[:6]) + more)
    if problems:
        raise CheckpointError(f"{folder}: its tensors do not fit its {CONFIG}: " + "; ".join(problems))


def _our_name(hf_name: str) -> str:
    if hf_name in HF_MODEL_NAMES:
        return HF_MODEL_NAMES[hf_name]
    parts = hf_name.split(".")  # model.layers.3.self_attn.q_proj.weight (_check_shapes knows it)
    return f"layers.{parts[2]}.{HF_LAYER_NAMES['.'.join(parts[3:-1])]}.{parts[-1]}"


def interleave_rope_rows(weight: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Rows of a q/k projection from Hugging Face's rotate-half order to interleaved pairs.

    Within each head, HF row i (first half) and row i + head_dim/2 (second half) are the two
    coordinates that rotate together; ours are rows 2i and 2i+1."""
    return weight.view(n_heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(weight.shape)


def halve_rope_rows(weight: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """The inverse of interleave_rope_rows: our interleaved rows to Hugging Face's halves."""
    return weight.view(n_heads, head_dim // 2, 2, -1).transpose(1, 2).reshape(weight.shape)


# ---------------------------------------------------------------------------------------------
# Writing

def hf_config(config: LlamaConfig, special_ids: dict[str, int | None]) -> dict:
    """config.json for our config, in the spelling that transformers 4 and 5 both read."""
    hf = {
        "architectures": [ARCHITECTURE], "model_type": "llama", "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
        "vocab_size": config.vocab_size, "hidden_size": config.dim, "intermediate_size": config.ffn_hidden_dim,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads, "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.layer_norm_eps,
        "rope_theta": config.rope_theta, "rope_scaling": config.rope_scaling,
        "tie_word_embeddings": config.tie_word_embeddings,
    }
    return {**hf, **special_ids}


def hf_state_dict(config: LlamaConfig, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in Hugging Face's names and rotate-half q/k rows, float32."""
    ours_to_hf = {ours: hf for hf, ours in HF_MODEL_NAMES.items()}
    for i in range(config.n_layers):
        ours_to_hf.update({f"layers.{i}.{ours}.weight": f"model.layers.{i}.{hf}.weight"
                           for hf, ours in HF_LAYER_NAMES.items()})
    hf = {}
    for name, tensor in state_dict.items():
        if name == "output.weight" and config.tie_word_embeddings:
            continue
        if name.endswith("compute_query.weight"):
            tensor = halve_rope_rows(tensor, config.n_heads, config.head_dim)
        elif name.endswith("compute_key.weight"):
            tensor = halve_rope_rows(tensor, config.n_kv_heads, config.head_dim)
        hf[ours_to_hf[name]] = tensor.detach().to(torch.float32, copy=True)  # safetensors refuses shared storage
    return hf


def write_folder_atomically(out: Path, write) -> None:
    """Call write(tmp_folder), then move the folder to `out` whole: a crash leaves nothing half-written.
    `out` must not exist yet, or be an empty folder."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists; export to a new folder (or remove it first)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run of this process id
    tmp.mkdir()
    try:
        write(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
