"""Tests for checkpoints.py: every format round-trips through files written here (small random
models), and every kind of broken file gives a CheckpointError naming the file and the problem."""

import os
import struct

import gguf
import numpy as np
import pytest
import torch

from config import LlamaConfig
from llama import Llama, load_pretrained
from support.checkpoints import CheckpointError, checkpoint_format, load_state_dict_strict, read_checkpoint
from utils import MissingAssetError

# GQA and an explicit FFN size, so that every projection has its own shape.
CONFIG = dict(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16, hidden_dim=48)
LLAMA2C_ARGS = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, hidden_dim=48,
                    multiple_of=32, max_seq_len=16, dropout=0.0, norm_eps=1e-5)  # llama2.c's model_args


def random_llama(tied=True, seed=0, **overrides) -> Llama:
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(**{**CONFIG, "tie_word_embeddings": tied, **overrides}))
    with torch.no_grad():  # norms start at exactly 1; make them matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


def llama2c_names(state_dict):
    """Our attention names -> llama2.c's (what its train.py saves)."""
    renames = {"compute_query": "wq", "compute_key": "wk", "compute_value": "wv", "compute_output": "wo"}
    out = {}
    for name, tensor in state_dict.items():
        for ours, theirs in renames.items():
            name = name.replace(f"attention.{ours}.", f"attention.{theirs}.")
        out[name] = tensor
    return out


def save_pt(path, model, *, llama2c_naming=False, compiled=False, args=LLAMA2C_ARGS, model_dict=None):
    """A checkpoint as llama2.c's train.py writes one, optimizer state and run config included."""
    state_dict = model_dict if model_dict is not None else model.state_dict()
    if llama2c_naming:
        state_dict = llama2c_names(state_dict)
    if compiled:
        state_dict = {f"_orig_mod.{name}": tensor for name, tensor in state_dict.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, CONFIG["vocab_size"], (1, 8))
    model(tokens, targets=tokens)[0].sum().backward()  # one step, so the optimizer has state to save
    optimizer.step()
    torch.save({"model": state_dict, "optimizer": optimizer.state_dict(), "model_args": args,
                "iter_num": 100, "best_val_loss": 1.5, "config": {"batch_size": 8, "dataset": "tinystories"}}, path)
    model.zero_grad()
    return path


def write_llama2c(path, model, version=0):
    """llama2.c export.py's legacy_export (v0) and version1_export (v1), written independently."""
    c = model.config
    shared = torch.equal(model.output.weight, model.tok_embeddings.weight)
    dims = (c.dim, c.ffn_hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len)

    def per_layer(name):  # one kind of weight, for every layer in turn
        return [layer.get_parameter(f"{name}.weight") for layer in model.layers]

    attention = [per_layer(f"attention.compute_{p}") for p in ("query", "key", "value", "output")]
    ffn = [per_layer(f"feed_forward.{p}") for p in ("w1", "w2", "w3")]
    attention_norms, ffn_norms = per_layer("attention_norm"), per_layer("ffn_norm")
    if version == 0:
        header = struct.pack("<7i", *dims[:5], c.vocab_size if shared else -c.vocab_size, c.max_seq_len)
        angles = torch.outer(torch.arange(c.max_seq_len).float(),
                             10000.0 ** (-torch.arange(0, c.head_dim, 2).float() / c.head_dim))
        tensors = ([model.tok_embeddings.weight] + attention_norms + sum(attention, []) + ffn_norms
                   + sum(ffn, []) + [model.norm.weight, angles.cos(), angles.sin()])
    else:
        header = struct.pack("<Ii7iB", 0x616B3432, 1, *dims, int(shared))
        header += b"\0" * (256 - len(header))
        tensors = (attention_norms + ffn_norms + [model.norm.weight, model.tok_embeddings.weight]
                   + sum(attention, []) + sum(ffn, []))
    if not shared:
        tensors.append(model.output.weight)
    with open(path, "wb") as f:
        f.write(header)
        for tensor in tensors:
            f.write(tensor.detach().numpy().astype("<f4").tobytes())
    return path


def assert_same_model(loaded: Llama, original: Llama):
    assert loaded.state_dict().keys() == original.state_dict().keys()
    # load_pretrained builds on the meta device: every parameter must have been given real, trainable memory,
    # and a tied classifier must still be the embedding (one Parameter), as in a model built normally.
    assert not any(p.is_meta for p in loaded.parameters()) and all(p.requires_grad for p in loaded.parameters())
    tied = original.output.weight is original.tok_embeddings.weight
    assert (loaded.output.weight is loaded.tok_embeddings.weight) == tied
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    tokens = torch.randint(0, CONFIG["vocab_size"], (2, 10))
    assert torch.equal(loaded(tokens, targets=tokens)[0], original(tokens, targets=tokens)[0])


# --- round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize("llama2c_naming", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_pt_round_trip(tmp_path, llama2c_naming, compiled):
    model = random_llama()
    path = save_pt(tmp_path / "ckpt.pt", model, llama2c_naming=llama2c_naming, compiled=compiled)
    assert checkpoint_format(path) == "torch"
    model_args, state_dict = read_checkpoint(path)
    assert model_args["layer_norm_eps"] == 1e-5 and "norm_eps" not in model_args
    assert "output.weight" not in state_dict  # tied: listed once
    assert all(t.dtype == torch.float32 for t in state_dict.values())
    assert_same_model(load_pretrained(path), model)


def test_pt_with_our_own_config_and_untied_output(tmp_path):
    model = random_llama(tied=False)
    path = save_pt(tmp_path / "ours.pt", model, args=model.config.to_dict())
    loaded = load_pretrained(path)
    assert not loaded.config.tie_word_embeddings
    assert_same_model(loaded, model)


def test_pt_half_precision_is_read_as_float32(tmp_path):
    model = random_llama()
    half = {name: tensor.to(torch.bfloat16) for name, tensor in model.state_dict().items()}
    _, state_dict = read_checkpoint(save_pt(tmp_path / "bf16.pt", model, model_dict=half))
    assert all(t.dtype == torch.float32 for t in state_dict.values())


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("tied", [True, False])
def test_llama2c_bin_round_trip(tmp_path, version, tied):
    model = random_llama(tied=tied)
    path = write_llama2c(tmp_path / "model.bin", model, version)
    assert checkpoint_format(path) == "llama2c"
    model_args, state_dict = read_checkpoint(path)
    assert model_args["tie_word_embeddings"] == tied and ("output.weight" in state_dict) == (not tied)
    assert_same_model(load_pretrained(path), model)


def test_layernorm_model_loads_a_checkpoint_without_biases(tmp_path):
    path = save_pt(tmp_path / "rms.pt", random_llama())
    model = load_pretrained(path, norm_type="layernorm")
    biases = [p for name, p in model.named_parameters() if name.endswith("norm.bias")]
    assert len(biases) == 2 * CONFIG["n_layers"] + 1 and all(torch.all(b == 0) for b in biases)


def write_gguf(path, model) -> dict[str, torch.Tensor]:
    """Write `model` as a GGUF file with the gguf package (one kind of tensor quantised to Q8_0);
    returns the state dict it must read back as."""
    writer = gguf.GGUFWriter(str(path), "llama")
    c = model.config
    writer.add_block_count(c.n_layers)
    writer.add_context_length(c.max_seq_len)
    writer.add_embedding_length(c.dim)
    writer.add_feed_forward_length(c.ffn_hidden_dim)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(50000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(c.vocab_size)])
    names = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output",
             "attention_norm": "attn_norm", "ffn_norm": "ffn_norm", "attention.compute_query": "attn_q",
             "attention.compute_key": "attn_k", "attention.compute_value": "attn_v",
             "attention.compute_output": "attn_output", "feed_forward.w1": "ffn_gate",
             "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up"}
    expected = {}
    for name, tensor in model.state_dict().items():
        parts = name.removesuffix(".weight").split(".", 2)
        gguf_name = f"blk.{parts[1]}.{names[parts[2]]}.weight" if parts[0] == "layers" else f"{names[parts[0]]}.weight"
        array = tensor.numpy()
        if name.endswith("compute_query.weight"):  # quantise one kind, as real files do
            quantised = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, quantised, raw_shape=quantised.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            array = gguf.quants.dequantize(quantised, gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, array)
        expected[name] = torch.from_numpy(np.array(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def test_gguf_round_trip(tmp_path):
    """A GGUF written with the gguf package: F32 and quantised Q8_0 tensors, reversed dims."""
    model = random_llama(tied=False)
    path = tmp_path / "tiny.gguf"
    expected = write_gguf(path, model)
    model_args, state_dict = read_checkpoint(path)
    assert model_args == dict(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                              max_seq_len=16, layer_norm_eps=pytest.approx(1e-6), rope_theta=50000.0,
                              tie_word_embeddings=False)
    assert state_dict.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state_dict[name], tensor), name
    # Q8_0 is lossy but close, so the model only nearly matches.
    query = state_dict["layers.0.attention.compute_query.weight"]
    assert (query - model.layers[0].attention.compute_query.weight).abs().max() < 1e-3
    load_pretrained(path)


def test_gguf_cache(tmp_path, monkeypatch):
    """The decoded file is stored once, under its content's hash, read back the same, and not used
    for a changed file."""
    from support import gguf_cache
    from support.checkpoints import _gguf_reader

    monkeypatch.setenv("MINLLAMA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    expected = write_gguf(path, random_llama(tied=False))

    def read():
        _gguf_reader.cache_clear()  # the in-process cache would hide the disk
        return read_checkpoint(path)

    first = read()
    entry = gguf_cache.cache_file(path)
    assert entry.is_file() and entry.is_relative_to(tmp_path / "cache")
    second = read()  # from the entry
    assert first[0] == second[0] and second[1].keys() == expected.keys()
    assert all(torch.equal(second[1][name], tensor) for name, tensor in expected.items())

    entry.write_bytes(b"not a torch file")  # damaged: decoded again and rewritten
    assert torch.equal(read()[1]["norm.weight"], expected["norm.weight"])
    assert gguf_cache.cache_file(path).stat().st_size > 100
    copy = tmp_path / "elsewhere" / "renamed.gguf"  # another checkout's copy: the same entry
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    os.utime(copy, ns=(1, 1))
    assert gguf_cache.cache_file(copy) == entry
    write_gguf(path, random_llama(tied=True))  # a changed file gets its own entry
    assert gguf_cache.cache_file(path) != entry
    monkeypatch.setenv("MINLLAMA_CACHE", "off")
    assert gguf_cache.cache_file(path) is None and read()[0] == first[0]


def test_gguf_cache_is_kept_under_its_size_bound(tmp_path, monkeypatch):
    """Past MINLLAMA_GGUF_CACHE_MB the least recently used entries go; the newest stays."""
    from support import gguf_cache
    from support.checkpoints import _gguf_reader

    monkeypatch.setenv("MINLLAMA_CACHE", str(tmp_path / "cache"))
    paths = [tmp_path / f"model-{i}.gguf" for i in range(3)]
    for seed, path in enumerate(paths):
        write_gguf(path, random_llama(tied=False, seed=seed))
    _gguf_reader.cache_clear()
    read_checkpoint(paths[0])
    entry_size = gguf_cache.cache_file(paths[0]).stat().st_size
    monkeypatch.setenv("MINLLAMA_GGUF_CACHE_MB", str(2.5 * entry_size / 2**20))  # room for two entries
    read_checkpoint(paths[1])
    os.utime(gguf_cache.cache_file(paths[0]), ns=(1, 1))  # the first is the least recently used
    read_checkpoint(paths[2])
    kept = {entry.name for entry in (tmp_path / "cache" / "gguf").glob("*.pt")}
    assert len(kept) == 2 and kept == {gguf_cache.cache_file(paths[1]).name, gguf_cache.cache_file(paths[2]).name}


# --- errors -------------------------------------------------------------------------------------

def expect_error(path, *fragments, **overrides):
    with pytest.raises(CheckpointError) as error:
        load_pretrained(path, **overrides)
    message = str(error.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path):
    with pytest.raises(MissingAssetError, match="absent.pt"):
        read_checkpoint(tmp_path / "absent.pt")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are my notes, not a model\n" * 20)
    expect_error(path, "not a checkpoint")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    expect_error(path, "not a checkpoint")


@pytest.mark.parametrize("version", [0, 1])
def test_truncated_bin(tmp_path, version):
    path = write_llama2c(tmp_path / "model.bin", random_llama(), version)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    expect_error(path, "truncated", f"needs {len(data)} bytes, the file has {len(data) - 100}")


def test_bin_with_trailing_bytes(tmp_path):
    path = write_llama2c(tmp_path / "model.bin", random_llama())
    path.write_bytes(path.read_bytes() + b"\0" * 8)
    expect_error(path, "8 bytes longer than its header implies")


def test_quantised_llama2c_export_is_refused(tmp_path):
    path = tmp_path / "q80.bin"
    path.write_bytes(struct.pack("<Ii7iB", 0x616B3432, 2, 32, 48, 2, 4, 2, 96, 16, 1) + b"\0" * 300)
    expect_error(path, "version 2 is not supported")


def test_truncated_pt(tmp_path):
    path = save_pt(tmp_path / "model.pt", random_llama())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_error(path, "cannot read it as a PyTorch checkpoint")


def test_garbage_pt(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    expect_error(path, "cannot read it as a PyTorch checkpoint")


def test_pt_that_is_a_bare_state_dict(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(random_llama().state_dict(), path)
    expect_error(path, "expected a dict with 'model_args' and a 'model' state dict", "found keys ['tok_embeddings.weight'")


def test_pt_with_an_unknown_model_arg(tmp_path):
    path = save_pt(tmp_path / "model.pt", random_llama(), args={**LLAMA2C_ARGS, "n_experts": 8})
    expect_error(path, "LlamaConfig does not know: n_experts")


def test_pt_with_invalid_hyper_parameters(tmp_path):
    path = save_pt(tmp_path / "model.pt", random_llama(), args={**LLAMA2C_ARGS, "n_heads": 3})
    expect_error(path, "do not make a valid LlamaConfig", "not divisible by n_heads 3")


def test_wrong_shapes(tmp_path):
    # model_args say dim 32, the tensors come from a dim-48 model
    path = save_pt(tmp_path / "model.pt", random_llama(dim=48, n_heads=4))
    message = expect_error(path, "wrong shape", "tok_embeddings.weight (96, 48) (model: (96, 32))")
    assert "dim=32" in message


def test_missing_tensor(tmp_path):
    state_dict = random_llama().state_dict()
    del state_dict["layers.1.feed_forward.w2.weight"]
    path = save_pt(tmp_path / "model.pt", random_llama(), model_dict=state_dict)
    expect_error(path, "missing: layers.1.feed_forward.w2.weight")


def test_unexpected_tensor(tmp_path):
    state_dict = {**random_llama().state_dict(), "layers.0.attention.rotary.inv_freq": torch.zeros(4)}
    path = save_pt(tmp_path / "model.pt", random_llama(), model_dict=state_dict)
    expect_error(path, "unexpected: layers.0.attention.rotary.inv_freq")


def test_same_tensor_under_both_namings(tmp_path):
    state_dict = random_llama().state_dict()
    state_dict["layers.0.attention.wq.weight"] = state_dict["layers.0.attention.compute_query.weight"]
    path = save_pt(tmp_path / "model.pt", random_llama(), model_dict=state_dict)
    expect_error(path, "'layers.0.attention.compute_query.weight' appears twice")


def test_untied_output_into_a_tied_model(tmp_path):
    untied = random_llama(tied=False)
    model_args, state_dict = read_checkpoint(save_pt(tmp_path / "model.pt", untied, args=untied.config.to_dict()))
    with pytest.raises(CheckpointError, match="output.weight differs from tok_embeddings.weight"):
        load_state_dict_strict(random_llama(tied=True), state_dict, "somewhere.pt")


def test_failed_load_leaves_the_model_unchanged():
    model = random_llama()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    broken = {name: torch.zeros_like(tensor) for name, tensor in model.state_dict().items()}
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected: extra.weight"):
        load_state_dict_strict(model, broken, "broken.pt")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_many_problems_are_summarised(tmp_path):
    _, state_dict = read_checkpoint(save_pt(tmp_path / "model.pt", random_llama()))
    with pytest.raises(CheckpointError) as error:
        load_state_dict_strict(random_llama(n_layers=8), state_dict, "small.pt")
    assert "missing: layers.2." in str(error.value) and "and 48 more" in str(error.value)


def test_gguf_errors(tmp_path):

    def write(name, arch="llama", tensors=(), truncate=0):
        """A GGUF for a 1-layer, dim-8, 4-token model, holding `tensors` (name -> shape)."""
        path = tmp_path / name
        writer = gguf.GGUFWriter(str(path), arch)
        for key in ("block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count"):
            writer.add_uint32(f"{arch}.{key}", {"block_count": 1, "attention.head_count": 2}.get(key, 8))
        writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
        writer.add_token_list(["a", "b", "c", "d"])
        for tensor_name, shape in dict(tensors).items():
            writer.add_tensor(tensor_name, np.ones(shape, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        if truncate:
            path.write_bytes(path.read_bytes()[:-truncate])
        return path

    expect_error(write("qwen.gguf", arch="qwen2"), "architecture 'qwen2' is not supported")
    expect_error(write("rope.gguf", tensors={"rope_freqs.weight": (4,)}), "unexpected GGUF tensor 'rope_freqs.weight'")
    expect_error(write("cut.gguf", tensors={"token_embd.weight": (4, 8)}, truncate=64), "cannot parse it as GGUF")
    # 5 embedding rows for a 4-token vocabulary, and no other tensor
    expect_error(write("small.gguf", tensors={"token_embd.weight": (5, 8)}),
                 "missing: layers.0.attention.compute_query.weight",
                 "wrong shape: tok_embeddings.weight (5, 8) (model: (4, 8))")
