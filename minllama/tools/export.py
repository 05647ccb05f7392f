"""Export a checkpoint for other programs: `python -m minllama.tools.export CHECKPOINT OUT --format llama2c|gguf|hf`.

CHECKPOINT is anything `load_pretrained` reads (our `.pt` files, llama2.c `.bin`, GGUF, a
Hugging Face folder). Its tokenizer comes with it (`tokenizer_for_checkpoint`), or from
`--tokenizer`. The three formats:

- `llama2c`: version 1 of llama2.c's export, the float32 file its `run.c` memory-maps. A
  256-byte header (uint32 magic 0x616b3432, int32 version 1, seven int32: dim, hidden_dim,
  n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len; a uint8 "classifier shared with the
  embedding" flag; zeros), then every tensor as little-endian float32, each kind stacked over
  the layers: attention norms, ffn norms, final norm, embedding, wq, wk, wv, wo, w1, w2, w3, and
  the classifier if not shared. run.c fixes RoPE's theta at 10000 and the norm epsilon at 1e-5,
  so a model that differs is refused. (The tokenizer is llama2.c's separate tokenizer.bin.)
- `gguf`: llama.cpp's format, written with the `gguf` library: the `llama.*` hyper-parameter
  keys, float32 tensors under llama.cpp's names, and the tokenizer as metadata. Q and K keep
  our interleaved-pair rows, which is the layout llama.cpp's converter stores.
- `hf`: a Hugging Face folder (config.json, model.safetensors, tokenizer.json,
  tokenizer_config.json, generation_config.json) that transformers' from_pretrained loads.

Every output appears whole or not at all: it is written under a temporary name beside OUT,
then renamed.
"""

import argparse
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import torch

from config import LlamaConfig
from support.checkpoints import GGUF_LAYER_NAMES, GGUF_MODEL_NAMES, LLAMA2C_MAGIC, CheckpointError
from support.hf_checkpoint import hf_config, hf_state_dict, write_folder_atomically
from support.hf_tokenizer import CONTROL, NORMAL, UNUSED, USER_DEFINED, sentencepiece_pieces
from utils import atomic_path, require_file

FORMATS = ("llama2c", "gguf", "hf")


class ExportError(ValueError):
    """A model or tokenizer that the chosen format cannot hold; the message says why."""


def export(checkpoint, out, fmt: str, tokenizer_path=None) -> Path:
    """Export `checkpoint` to `out` in format `fmt` (see the module docstring). Returns `out`.
    Everything that could go wrong is checked before the first byte is written."""
    from llama import load_pretrained
    from tokenizer import Tokenizer, tokenizer_for_checkpoint

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (choose {', '.join(FORMATS)})")
    out = Path(out)
    if fmt == "hf" and out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists; export to a new folder (or remove it first)")
    model = load_pretrained(checkpoint)
    config, state_dict = model.config, model.state_dict()
    _check_portable(config, fmt)
    tokenizer = None
    if fmt != "llama2c":
        tokenizer = (Tokenizer(tokenizer_model=require_file(tokenizer_path)) if tokenizer_path
                     else tokenizer_for_checkpoint(checkpoint))
        if tokenizer.n_words > config.vocab_size:
            raise ExportError(f"the tokenizer has {tokenizer.n_words} pieces but {checkpoint} has only "
                              f"{config.vocab_size} embedding rows: give its own with --tokenizer")
    if fmt == "llama2c":
        with atomic_path(out) as temporary:
            write_llama2c(temporary, config, state_dict)
    elif fmt == "gguf":
        metadata = gguf_tokenizer_metadata(tokenizer, config.vocab_size)  # may refuse: before writing
        with atomic_path(out) as temporary:
            write_gguf(temporary, config, state_dict, metadata)
    else:
        write_folder_atomically(out, lambda folder: write_hf(folder, config, state_dict, tokenizer))
    return out


def _check_portable(config: LlamaConfig, fmt: str) -> None:
    changes = config.architecture_changes()
    if changes:
        named = ", ".join(f"{name} {value}" for name, value in changes.items())
        raise ExportError(f"{fmt} stores Llama 2's architecture; this model changes it ({named})")
    if config.norm_type != "rmsnorm":
        raise ExportError(f"{fmt} stores Llama models with RMSNorm; this one uses {config.norm_type}")
    if fmt == "llama2c":
        if config.rope_theta != 10000.0 or config.rope_scaling is not None:
            raise ExportError("llama2.c's run.c fixes RoPE at theta 10000 without scaling; this model has "
                              f"rope_theta={config.rope_theta}, rope_scaling={config.rope_scaling}")
        if config.layer_norm_eps != 1e-5:
            raise ExportError("llama2.c's run.c fixes the RMSNorm epsilon at 1e-5; "
                              f"this model has {config.layer_norm_eps}")
    if fmt == "gguf" and config.rope_scaling is not None:
        raise ExportError("GGUF export of Llama 3's rope_scaling is not implemented "
                          "(llama.cpp keeps it as a rope_freqs tensor); export it with --format hf")


# ---------------------------------------------------------------------------------------------
# llama2.c

def llama2c_tensors(config: LlamaConfig, state_dict: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of a version 1 export, in file order."""
    def layers(name):
        return [state_dict[f"layers.{i}.{name}.weight"] for i in range(config.n_layers)]

    tensors = [*layers("attention_norm"), *layers("ffn_norm"), state_dict["norm.weight"],
               state_dict["tok_embeddings.weight"]]
    for name in ("attention.compute_query", "attention.compute_key", "attention.compute_value",
                 "attention.compute_output", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"):
        tensors += layers(name)
    if not config.tie_word_embeddings:
        tensors.append(state_dict["output.weight"])
    return tensors


def write_llama2c(path: Path, config: LlamaConfig, state_dict: dict[str, torch.Tensor]) -> None:
    header = struct.pack("<Ii7iB", LLAMA2C_MAGIC, 1, config.dim, config.ffn_hidden_dim, config.n_layers,
                         config.n_heads, config.n_kv_heads, config.vocab_size, config.max_seq_len,
                         int(config.tie_word_embeddings))
    with open(path, "wb") as f:
        f.write(header + bytes(256 - len(header)))
        for tensor in llama2c_tensors(config, state_dict):
            f.write(tensor.detach().to(torch.float32).numpy().astype("<f4", copy=False).tobytes())


# ---------------------------------------------------------------------------------------------
# GGUF

def gguf_tensors(config: LlamaConfig, state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Our state dict under llama.cpp's tensor names, as float32 arrays in PyTorch's shape order
    (GGUFWriter writes the dims reversed, as ggml lists them)."""
    ours_to_gguf = {f"{ours}.weight": f"{gguf_name}.weight" for gguf_name, ours in GGUF_MODEL_NAMES.items()}
    for i in range(config.n_layers):
        ours_to_gguf.update({f"layers.{i}.{ours}.weight": f"blk.{i}.{gguf_name}.weight"
                             for gguf_name, ours in GGUF_LAYER_NAMES.items()})
    return {ours_to_gguf[name]: tensor.detach().to(torch.float32).numpy()
            for name, tensor in state_dict.items()
            if not (name == "output.weight" and config.tie_word_embeddings)}


def write_gguf(path: Path, config: LlamaConfig, state_dict: dict[str, torch.Tensor], tokenizer_metadata) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.ffn_hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_layer_norm_rms_eps(config.layer_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for add, value in tokenizer_metadata:
        getattr(writer, add)(value)
    for name, array in gguf_tensors(config, state_dict).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_tokenizer_metadata(tokenizer, vocab_size: int) -> list[tuple[str, object]]:
    """(GGUFWriter method, value) pairs that store the tokenizer as llama.cpp does: for SentencePiece
    `tokenizer.ggml.model = "llama"` with pieces, scores and piece types, for byte-level BPE "gpt2"
    with pieces, merges and the pre-tokenizer's name. Rows of the embedding past the tokenizer get
    unused placeholder pieces, since GGUF readers take the vocabulary size from the piece list."""
    if tokenizer.kind == "sentencepiece":
        pieces, scores, kinds = sentencepiece_pieces(tokenizer.sp)
        model = [("add_tokenizer_model", "llama"), ("add_unk_token_id", tokenizer.sp.unk_id())]
    elif tokenizer.kind == "bpe":
        content = json.loads(tokenizer.bpe.to_str())
        if content["model"]["type"] != "BPE" or not content["model"].get("merges"):
            raise ExportError(f"GGUF stores byte-level BPE tokenizers; this one is a {content['model']['type']} model")
        added = {token["id"]: token["special"] for token in content.get("added_tokens", [])}
        pieces = [tokenizer.bpe.id_to_token(i) for i in range(tokenizer.n_words)]
        scores = [0.0] * len(pieces)
        kinds = [NORMAL if i not in added else CONTROL if added[i] else USER_DEFINED for i in range(len(pieces))]
        merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in content["model"]["merges"]]
        model = [("add_tokenizer_model", "gpt2"), ("add_tokenizer_pre", gguf_pre_tokenizer(content)),
                 ("add_token_merges", merges)]
    else:
        raise ExportError(f"GGUF cannot hold a {tokenizer.kind!r} tokenizer: llama.cpp and transformers read "
                          "only SentencePiece and byte-level BPE vocabularies from GGUF; export with "
                          "--format hf or llama2c, or train the model with a SentencePiece tokenizer")
    padding = vocab_size - len(pieces)
    pieces += [f"[PAD{i}]" for i in range(len(pieces), vocab_size)]
    metadata = model + [
        ("add_token_list", pieces), ("add_token_scores", scores + [-1e4] * padding),
        ("add_token_types", kinds + [UNUSED] * padding),
        ("add_bos_token_id", tokenizer.bos_id), ("add_eos_token_id", tokenizer.eos_id),
        ("add_pad_token_id", tokenizer.pad_id), ("add_add_bos_token", tokenizer.add_bos),
        ("add_add_eos_token", False)]
    if tokenizer.chat_template is not None:
        metadata.append(("add_chat_template", tokenizer.chat_template))
    return metadata


def gguf_pre_tokenizer(content: dict) -> str:
    """llama.cpp's name (`tokenizer.ggml.pre`) for the pre-tokenizer of a tokenizer.json, among
    those tokenizer.py rebuilds from a GGUF file."""
    from tokenizer import GGUF_PRE_TOKENIZERS

    ours = json.loads(json.dumps(content.get("pre_tokenizer")))
    for name in ("gpt2", "smollm"):
        if json.loads(GGUF_PRE_TOKENIZERS[name]().__getstate__()) == ours:
            return name
    raise ExportError(f"no GGUF pre-tokenizer name is known for this tokenizer's pre-tokenizer {ours}: "
                      f"known: {', '.join(sorted(GGUF_PRE_TOKENIZERS))}")


# ---------------------------------------------------------------------------------------------
# Hugging Face

def write_hf(folder: Path, config: LlamaConfig, state_dict: dict[str, torch.Tensor], tokenizer) -> None:
    from safetensors.torch import save_file

    from support.hf_tokenizer import write_tokenizer_files

    write_tokenizer_files(tokenizer, folder, config.max_seq_len)
    special_ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                   "pad_token_id": tokenizer.pad_id}
    save_file(hf_state_dict(config, state_dict), folder / "model.safetensors", metadata={"format": "pt"})
    umask = os.umask(0)  # safetensors creates its file readable by the owner only: give it the usual mode
    os.umask(umask)
    os.chmod(folder / "model.safetensors", 0o666 & ~umask)
    (folder / "config.json").write_text(json.dumps(hf_config(config, special_ids), indent=2) + "\n")
    generation = {"bos_token_id": special_ids["bos_token_id"], "eos_token_id": special_ids["eos_token_id"]}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .pt, llama2.c .bin or GGUF file, or a Hugging Face folder")
    parser.add_argument("out", help="the file (llama2c, gguf) or new folder (hf) to write")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--tokenizer", help="tokenizer file to export with the model (default: the checkpoint's own)")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out, args.format, args.tokenizer)
    except (CheckpointError, ExportError, FileNotFoundError, FileExistsError) as error:
        sys.exit(f"export.py: {error}")
    print(f"wrote {out} ({args.format})")


if __name__ == "__main__":
    main()
