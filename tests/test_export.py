"""export.py: llama2.c's v1 `.bin` checked byte by byte against the format's description (struct and
numpy, not our reader), and GGUF checked against transformers' GGUF loader (an independent
implementation): the same logits to 1e-4, the same token ids, on tiny random models."""

import struct

import numpy as np
import pytest
import torch

from config import LlamaConfig
from llama import Llama
from minllama.tools import export
from support.checkpoints import read_checkpoint
from testkit import require_module
from tokenizer import Tokenizer, tokenizer_for_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def save_tiny(path, tokenizer, **overrides) -> Llama:
    """A tiny random Llama saved as our pre-training writes it: {"model_args", "model", "tokenizer"}."""
    torch.manual_seed(0)
    args = dict(vocab_size=tokenizer.n_words, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                max_seq_len=32, tie_word_embeddings=False)
    model = Llama(LlamaConfig(**{**args, **overrides})).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):  # they start at one: make them differ, so a swapped block shows
                parameter.uniform_(0.5, 1.5)
            elif "compute_query" in name or "compute_key" in name:  # sharp attention: positions matter
                parameter.normal_(0.0, 0.5)
    torch.save({"model_args": model.config.to_dict(), "model": model.state_dict(),
                "tokenizer": tokenizer.to_record()}, path)
    return model


@pytest.fixture(scope="module")
def sentencepiece(tokenizer_model_path):
    return Tokenizer(tokenizer_model=tokenizer_model_path)


@pytest.fixture(scope="module")
def chars():
    return Tokenizer.from_corpus_chars("to be or not to be")


# ---------------------------------------------------------------------------------------------
# llama2.c

@pytest.mark.parametrize("tied", [False, True])
def test_llama2c_v1_file_is_laid_out_as_the_format_describes(tmp_path, chars, tied):
    """Reference: llama2.c export.py's version1_export: a 256-byte header (uint32 0x616b3432, int32 1,
    7 int32, uint8 shared flag, zeros), then float32 blocks norms, embedding, wq..w3, classifier."""
    model = save_tiny(tmp_path / "tiny.pt", chars, tie_word_embeddings=tied)
    export.export(tmp_path / "tiny.pt", tmp_path / "tiny.bin", "llama2c")
    raw = (tmp_path / "tiny.bin").read_bytes()

    magic, version = struct.unpack_from("<Ii", raw, 0)
    params = struct.unpack_from("<7i", raw, 8)
    assert (magic, version) == (0x616B3432, 1) and raw[:4] == b"24ka"
    assert params == (32, 48, 2, 4, 2, chars.n_words, 32)
    assert raw[36] == int(tied) and raw[37:256] == bytes(219)

    weights = np.fromfile(tmp_path / "tiny.bin", dtype="<f4", offset=256)
    sd = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    layers = lambda name: [sd[f"layers.{i}.{name}.weight"] for i in range(2)]  # noqa: E731
    expected = [*layers("attention_norm"), *layers("ffn_norm"), sd["norm.weight"], sd["tok_embeddings.weight"],
                *layers("attention.compute_query"), *layers("attention.compute_key"),
                *layers("attention.compute_value"), *layers("attention.compute_output"),
                *layers("feed_forward.w1"), *layers("feed_forward.w2"), *layers("feed_forward.w3")]
    if not tied:
        expected.append(sd["output.weight"])
    np.testing.assert_array_equal(weights, np.concatenate([array.ravel() for array in expected]))


def test_llama2c_export_reads_back_through_read_checkpoint(tmp_path, chars):
    model = save_tiny(tmp_path / "tiny.pt", chars)
    export.export(tmp_path / "tiny.pt", tmp_path / "tiny.bin", "llama2c")
    model_args, state_dict = read_checkpoint(tmp_path / "tiny.bin")
    assert model_args["n_kv_heads"] == 2 and model_args["tie_word_embeddings"] is False
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(state_dict[name], tensor, rtol=0, atol=0, msg=name)


def test_llama2c_export_refuses_what_run_c_cannot_run_and_writes_nothing(tmp_path, chars):
    """run.c fixes RoPE's theta at 10000: a SmolLM2-like theta would run, wrongly."""
    save_tiny(tmp_path / "tiny.pt", chars, rope_theta=100000.0)
    with pytest.raises(export.ExportError, match="theta 10000.*rope_theta=100000"):
        export.export(tmp_path / "tiny.pt", tmp_path / "tiny.bin", "llama2c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]


# ---------------------------------------------------------------------------------------------
# GGUF

def transformers_logits(folder, tokens, **kwargs) -> torch.Tensor:
    transformers = require_module("transformers")
    require_module("accelerate")  # transformers needs it to read GGUF
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        return model(tokens).logits


def exported_gguf(folder, tokenizer):
    model = save_tiny(folder / "tiny.pt", tokenizer)
    export.export(folder / "tiny.pt", folder / "tiny.gguf", "gguf")
    return model, folder / "tiny.gguf"


def check_gguf_against_transformers(model, path, tokenizer, texts):
    """transformers' GGUF loader reads our file into its own Llama and tokenizer: same ids, same logits."""
    transformers = require_module("transformers")
    theirs_tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in texts:
        assert theirs_tokenizer(text)["input_ids"] == tokenizer.encode(text, bos=True, eos=False), text
    tokens = torch.tensor([tokenizer.encode(texts[0], bos=True, eos=False)])
    with torch.no_grad():
        ours, _ = model(tokens, tokens)
    theirs = transformers_logits(path.parent, tokens, gguf_file=path.name)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_gguf_export_with_sentencepiece_matches_transformers(tmp_path, sentencepiece):
    # (Not a text that starts with a space: transformers rebuilds a GGUF SentencePiece vocabulary
    # with pre_tokenizers.Metaspace, which puts no "▁" before one, where SentencePiece does.)
    texts = ["Once upon a time, a cat sat.", "Ünïcode 日本語 and bytes: 😀", "two  spaces"]
    model, path = exported_gguf(tmp_path, sentencepiece)
    check_gguf_against_transformers(model, path, sentencepiece, texts)
    ours_again = tokenizer_for_checkpoint(path)  # our reader rebuilds the vocabulary from the metadata
    for text in texts + ["  leading spaces"]:
        assert ours_again.encode(text, bos=True, eos=True) == sentencepiece.encode(text, bos=True, eos=True), text


@pytest.fixture(scope="module")
def bpe_gguf(tmp_path_factory, smollm2_tokenizer):
    """A tiny random model with SmolLM2's byte-level BPE tokenizer, exported once (49k pieces take seconds)."""
    return exported_gguf(tmp_path_factory.mktemp("bpe"), smollm2_tokenizer)


@pytest.mark.slow
def test_gguf_export_with_byte_level_bpe_matches_transformers(bpe_gguf, smollm2_tokenizer):
    check_gguf_against_transformers(*bpe_gguf, smollm2_tokenizer,
                                    ["The movie was 1234 times better.", "naïve café, isn't it?"])


@pytest.mark.slow
def test_gguf_export_metadata_and_tensor_names_are_llama_cpps(bpe_gguf, smollm2_tokenizer):
    """Reference: llama.cpp's names (token_embd, blk.N.attn_q, ...) and key names (llama.*, tokenizer.ggml.*)."""
    gguf = require_module("gguf")
    reader = gguf.GGUFReader(bpe_gguf[1])
    value = lambda key: reader.fields[key].contents()  # noqa: E731
    assert value("general.architecture") == "llama"
    assert (value("llama.embedding_length"), value("llama.block_count"), value("llama.attention.head_count"),
            value("llama.attention.head_count_kv"), value("llama.feed_forward_length"),
            value("llama.context_length"), value("llama.rope.dimension_count")) == (32, 2, 4, 2, 48, 32, 8)
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "smollm"
    assert value("tokenizer.chat_template") == smollm2_tokenizer.chat_template is not None
    names = {tensor.name: tensor for tensor in reader.tensors}
    assert {"token_embd.weight", "output_norm.weight", "output.weight", "blk.1.attn_q.weight",
            "blk.1.attn_k.weight", "blk.1.ffn_gate.weight", "blk.1.ffn_up.weight", "blk.1.ffn_down.weight"} <= set(names)
    assert {tensor.tensor_type for tensor in reader.tensors} == {gguf.GGMLQuantizationType.F32}
    assert list(names["blk.0.attn_k.weight"].shape) == [32, 16]  # ggml lists (in, out)


def test_gguf_export_of_a_char_model_is_refused_and_writes_nothing(tmp_path, chars):
    save_tiny(tmp_path / "tiny.pt", chars)
    with pytest.raises(export.ExportError, match="GGUF cannot hold a 'char' tokenizer"):
        export.export(tmp_path / "tiny.pt", tmp_path / "tiny.gguf", "gguf")
    assert not (tmp_path / "tiny.gguf").exists() and len(list(tmp_path.iterdir())) == 1


def test_export_cli_names_the_problem_without_a_traceback(tmp_path, chars, capsys):
    save_tiny(tmp_path / "tiny.pt", chars)
    with pytest.raises(SystemExit, match="export.py: GGUF cannot hold a 'char' tokenizer"):
        export.main([str(tmp_path / "tiny.pt"), str(tmp_path / "tiny.gguf"), "--format", "gguf"])
    export.main([str(tmp_path / "tiny.pt"), str(tmp_path / "tiny.bin"), "--format", "llama2c"])
    assert "wrote" in capsys.readouterr().out and (tmp_path / "tiny.bin").is_file()
