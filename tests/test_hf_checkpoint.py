"""Hugging Face Llama folders in and out, against transformers' own Llama (an independent
implementation): tiny random models that transformers builds and saves (GQA, untied embeddings,
Llama 3's rope scaling, shards) load here with its logits; what export.py writes loads there with
ours; SmolLM2 makes the trip too. Bad folders fail naming the field, shard or tensor."""

import json
import shutil

import pytest
import torch

from config import LlamaConfig
from llama import Llama, load_pretrained
from minllama.tools import export
from support.checkpoints import CheckpointError, read_checkpoint
from support.hf_tokenizer import sentencepiece_as_bpe, sentencepiece_pieces
from testkit import require_module
from tokenizer import Tokenizer, tokenizer_for_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
transformers = require_module("transformers")

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 256}  # with head_dim 8 and theta 5e5: one pair of each kind


def hf_tiny(folder, max_shard_size=None, **overrides):
    """A random transformers LlamaForCausalLM saved with save_pretrained."""
    torch.manual_seed(0)
    args = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
                rope_theta=500000.0, rope_scaling=dict(LLAMA3_SCALING))  # (transformers edits the dict)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**args, **overrides})).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):  # they start at one: make them differ, so a swapped name shows
                parameter.uniform_(0.5, 1.5)
            elif "q_proj" in name or "k_proj" in name:  # sharp attention, so that positions matter
                parameter.normal_(0.0, 0.5)
    model.save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return model


def logits_of(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(model, Llama):
            return model(tokens, tokens)[0]
        return model(tokens).logits


TOKENS = torch.tensor([[1, 5, 17, 42, 3, 88, 64, 9, 23, 71, 2, 30]])


@pytest.mark.parametrize("overrides", [
    {},  # GQA, untied, llama3 rope scaling, theta 5e5
    {"tie_word_embeddings": True, "num_key_value_heads": 4, "rope_scaling": None, "rope_theta": 10000.0},
    {"num_key_value_heads": 1, "max_shard_size": "20KB"},  # multi-query attention, sharded safetensors
], ids=["gqa-untied-llama3", "tied-mha-default-rope", "mqa-sharded"])
def test_a_transformers_folder_loads_with_its_logits(tmp_path, overrides):
    theirs = hf_tiny(tmp_path, **overrides)
    if "max_shard_size" in overrides:
        assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = load_pretrained(tmp_path)
    assert ours.config.tie_word_embeddings == theirs.config.tie_word_embeddings
    torch.testing.assert_close(logits_of(ours, TOKENS), logits_of(theirs, TOKENS), rtol=0, atol=1e-4)


def test_the_transformers_4_spelling_of_rope_settings_reads_alike(tmp_path):
    """Folders on the Hub (Llama-3.2-1B's) say rope_theta and rope_scaling; transformers 5 writes rope_parameters."""
    theirs = hf_tiny(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    parameters = config.pop("rope_parameters")
    config["rope_theta"] = parameters.pop("rope_theta")
    config["rope_scaling"], config["torch_dtype"] = parameters, config.pop("dtype")
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.testing.assert_close(logits_of(load_pretrained(tmp_path), TOKENS), logits_of(theirs, TOKENS),
                               rtol=0, atol=1e-4)


def test_llama3_scaling_changes_the_logits(tmp_path):
    """The scaled frequency table is really used: without it the same weights give other logits."""
    hf_tiny(tmp_path)
    ours = load_pretrained(tmp_path)
    unscaled = load_pretrained(tmp_path, rope_scaling=None)
    assert (logits_of(ours, TOKENS) - logits_of(unscaled, TOKENS)).abs().max() > 1e-2


@pytest.mark.parametrize("overrides", [
    dict(tie_word_embeddings=False, rope_theta=500000.0, rope_scaling=dict(LLAMA3_SCALING)),
    dict(tie_word_embeddings=True),
], ids=["gqa-untied-llama3", "gqa-tied"])
def test_our_checkpoint_exported_as_a_folder_loads_in_transformers_with_our_logits(tmp_path, overrides):
    torch.manual_seed(0)
    chars = Tokenizer.from_corpus_chars("abcdefghijklmnopqrstuvwxyz ")
    model = Llama(LlamaConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                              max_seq_len=512, **overrides)).eval()
    with torch.no_grad():  # sharp attention, so that positions (and the q/k row order) matter
        for layer in model.layers:
            layer.attention.compute_query.weight.normal_(0.0, 0.5)
            layer.attention.compute_key.weight.normal_(0.0, 0.5)
    torch.save({"model_args": model.config.to_dict(), "model": model.state_dict(),
                "tokenizer": chars.to_record()}, tmp_path / "ours.pt")
    export.export(tmp_path / "ours.pt", tmp_path / "hf", "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    torch.testing.assert_close(logits_of(theirs, TOKENS), logits_of(model, TOKENS), rtol=0, atol=1e-4)
    # ... and back: the folder reads as the same model here too.
    torch.testing.assert_close(logits_of(load_pretrained(tmp_path / "hf"), TOKENS), logits_of(model, TOKENS),
                               rtol=0, atol=1e-5)
    their_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert their_tokenizer("a cab")["input_ids"] == chars.encode("a cab", bos=True, eos=False)


SP_TEXTS = ["Hello world", " leading space", "two  spaces   three", "tab\there\nnewline\n\n",
            "Ünïcode 日本語 😀 ﷺ", "1234 numbers 3.14", "", " ", "don't stop"]


def test_sentencepiece_as_tokenizers_bpe_gives_sentencepieces_ids(tokenizer_model_path, sst_dev_path):
    """Reference: the SentencePiece library itself, on the SST dev sentences and awkward strings."""
    sp = Tokenizer(tokenizer_model=tokenizer_model_path).sp
    bpe = sentencepiece_as_bpe(*sentencepiece_pieces(sp))
    texts = SP_TEXTS + [line.split("|||")[-1].strip() for line in sst_dev_path.read_text().splitlines()]
    for text in texts:
        ids = sp.encode(text)
        assert bpe.encode(text, add_special_tokens=False).ids == ids, text
        assert bpe.decode(ids) == sp.decode(ids), text


def test_a_sentencepiece_model_exported_as_a_folder_tokenizes_alike_in_transformers(tmp_path, tokenizer_model_path):
    sentencepiece = Tokenizer(tokenizer_model=tokenizer_model_path)
    model = Llama(LlamaConfig(vocab_size=32000, dim=16, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=32))
    torch.save({"model_args": model.config.to_dict(), "model": model.state_dict(),
                "tokenizer": sentencepiece.to_record()}, tmp_path / "ours.pt")
    export.export(tmp_path / "ours.pt", tmp_path / "hf", "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours_again = tokenizer_for_checkpoint(tmp_path / "hf")
    assert ours_again.kind == "bpe" and (ours_again.bos_id, ours_again.eos_id, ours_again.add_bos) == (1, 2, True)
    for text in SP_TEXTS:
        expected = sentencepiece.encode(text, bos=True, eos=False)
        assert theirs(text)["input_ids"] == expected, text
        assert ours_again.encode(text, bos=True, eos=False) == expected, text


@pytest.mark.slow
def test_smollm2_as_a_folder_loads_in_transformers_with_our_logits(tmp_path, smollm2_path, smollm2, smollm2_tokenizer):
    export.export(smollm2_path, tmp_path / "smollm2", "hf")
    config = json.loads((tmp_path / "smollm2" / "config.json").read_text())
    assert (config["rope_theta"], config["tie_word_embeddings"], config["num_key_value_heads"]) == (100000.0, True, 3)
    text = "The movie was great"
    tokens = torch.tensor([smollm2_tokenizer.encode(text, bos=True, eos=False)])
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2", dtype=torch.float32).eval()
    torch.testing.assert_close(logits_of(theirs, tokens), logits_of(smollm2, tokens), rtol=0, atol=1e-4)
    their_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "smollm2")
    assert their_tokenizer(text)["input_ids"] == tokens[0].tolist()
    torch.testing.assert_close(logits_of(load_pretrained(tmp_path / "smollm2"), tokens), logits_of(smollm2, tokens),
                               rtol=0, atol=1e-5)  # and our reader gives the model back
    ours_again = tokenizer_for_checkpoint(tmp_path / "smollm2")
    assert ours_again.chat_template == smollm2_tokenizer.chat_template is not None
    assert ours_again.encode("<|im_start|>user\nhi 42", bos=True, eos=True) == \
        smollm2_tokenizer.encode("<|im_start|>user\nhi 42", bos=True, eos=True)


def test_a_saved_byte_level_bpe_tokenizer_loads_back(tmp_path, smollm2_tokenizer):
    """Tokenizer.save writes tokenizer.json with its tokenizer_config.json: nothing is lost."""
    restored = Tokenizer(tokenizer_model=smollm2_tokenizer.save(tmp_path))
    assert (restored.kind, restored.n_words, restored.bos_id, restored.eos_id, restored.pad_id, restored.add_bos,
            restored.chat_template) == ("bpe", smollm2_tokenizer.n_words, smollm2_tokenizer.bos_id,
                                        smollm2_tokenizer.eos_id, smollm2_tokenizer.pad_id, False,
                                        smollm2_tokenizer.chat_template)
    text = "<|im_start|>user\nnaïve 1234<|im_end|>"
    assert restored.encode(text, bos=True, eos=True) == smollm2_tokenizer.encode(text, bos=True, eos=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


# ---------------------------------------------------------------------------------------------
# Bad folders: a clear message naming the problem

def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes, message", [
    ({"architectures": ["MistralForCausalLM"]}, r"architectures \['MistralForCausalLM'\] is not supported"),
    ({"dtype": "float8_e4m3fn"}, "dtype 'float8_e4m3fn' is not supported"),
    ({"torch_dtype": "int8"}, "dtype 'int8' is not supported"),
    ({"intermediate_size": 64}, r"shape disagrees with config.json: model.layers.0.mlp.gate_proj.weight \(48, 32\) "
                                r"\(config.json: \(64, 32\)\)"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_parameters": None}, "RoPE type 'yarn'"),
])
def test_a_bad_config_is_named(tmp_path, changes, message):
    hf_tiny(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(tmp_path)


def test_a_missing_shard_is_named(tmp_path):
    hf_tiny(tmp_path, max_shard_size="20KB")
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    shard = sorted(set(weight_map.values()))[1]
    (tmp_path / shard).unlink()
    with pytest.raises(CheckpointError, match=f"missing shard.*{shard}"):
        read_checkpoint(tmp_path)


def test_a_truncated_shard_and_a_folder_without_tokenizer_are_named(tmp_path):
    hf_tiny(tmp_path)
    with pytest.raises(CheckpointError, match="has no tokenizer.json"):
        tokenizer_for_checkpoint(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read it as safetensors"):
        read_checkpoint(tmp_path)


def test_a_tensor_the_config_does_not_have_is_named(tmp_path):
    hf_tiny(tmp_path)
    edit_config(tmp_path, num_hidden_layers=1)
    with pytest.raises(CheckpointError, match="unexpected: model.layers.1.input_layernorm.weight"):
        read_checkpoint(tmp_path)


def test_export_to_an_existing_folder_is_refused_and_leaves_it_alone(tmp_path):
    hf_tiny(tmp_path / "in")
    shutil.copytree(tmp_path / "in", tmp_path / "out")
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    chars = Tokenizer.from_corpus_chars("abc")
    chars.save(tmp_path)
    with pytest.raises(FileExistsError, match="already exists"):
        export.export(tmp_path / "in", tmp_path / "out", "hf", tokenizer_path=tmp_path / "char_tokenizer.json")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
