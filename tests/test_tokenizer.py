"""Tests for tokenizer.py: Llama 2's SentencePiece model against sentencepiece itself, and the
byte-level BPE rebuilt from SmolLM2's GGUF metadata against transformers' tokenizer read from
the same file. Real sentences from the course data, plus non-ASCII text."""

import gguf
import pytest
import sentencepiece
import torch

from support.checkpoints import CheckpointError
from testkit import require_module
from tokenizer import Tokenizer, tokenizer_for_checkpoint
from utils import MissingAssetError

NON_ASCII = [
    "Café crème brûlée, naïve façade.",
    "Über Größe und Übermut: schön!",
    "The movie was 😀 great 🎬🍿 !!",
    "東京タワーは美しい。这部电影很好看。",
    "Ελληνικά και русский текст",
    "  leading spaces, trailing space ",
    "tabs\tand\nnew lines\n\nhere",
    "It's I'll we've they're don't",
]


def sst_sentences(path, count=40) -> list[str]:
    """The first `count` sentences of an SST split (`LABEL ||| SENTENCE` lines)."""
    with open(path, encoding="utf-8") as f:
        return [line.split("|||", 1)[1].strip() for line, _ in zip(f, range(count))]


# --- SentencePiece ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_tokenizer(tokenizer_model_path):
    return Tokenizer(tokenizer_model=tokenizer_model_path)


def test_sentencepiece_ids_match_sentencepiece(llama_tokenizer, tokenizer_model_path, sst_dev_path):
    reference = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_model_path))
    for text in sst_sentences(sst_dev_path) + NON_ASCII:
        expected = reference.encode(text)
        assert llama_tokenizer.encode(text, bos=False, eos=False) == expected, text
        assert llama_tokenizer.encode(text, bos=True, eos=True) == [1] + expected + [2], text


def test_sentencepiece_special_ids(llama_tokenizer):
    assert (llama_tokenizer.bos_id, llama_tokenizer.eos_id, llama_tokenizer.n_words) == (1, 2, 32000)
    assert llama_tokenizer.pad_id == 3  # the byte piece <0x00>


def test_sentencepiece_decode_round_trip(llama_tokenizer, sst_dev_path):
    for text in sst_sentences(sst_dev_path) + NON_ASCII:
        ids = llama_tokenizer.encode(text, bos=True, eos=True)
        assert llama_tokenizer.decode(ids) == text, text


def test_max_len_keeps_the_first_ids(tokenizer_model_path):
    text = "a fairly long sentence that certainly needs more than eight tokens to encode"
    full = Tokenizer(tokenizer_model=tokenizer_model_path).encode(text, bos=True, eos=True)
    short = Tokenizer(max_len=8, tokenizer_model=tokenizer_model_path).encode(text, bos=True, eos=True)
    assert len(full) > 8 and short == full[:8]


def test_missing_default_model_says_how_to_get_it(monkeypatch, tmp_path):
    import tokenizer
    from utils import REPO_ROOT
    assert tokenizer.TOKENIZER_MODEL == REPO_ROOT / "tokenizer.model"  # where setup.sh puts it
    monkeypatch.setattr(tokenizer, "TOKENIZER_MODEL", tmp_path / "tokenizer.model")
    with pytest.raises(MissingAssetError) as error:
        Tokenizer()
    assert str(tmp_path / "tokenizer.model") in str(error.value) and "setup.sh" in str(error.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(MissingAssetError, match="nowhere.model"):
        Tokenizer(tokenizer_model=tmp_path / "nowhere.model")


def test_not_a_tokenizer(tmp_path):
    path = tmp_path / "garbage.model"
    path.write_bytes(b"this is not a sentencepiece model" * 10)
    with pytest.raises(ValueError, match="garbage.model"):
        Tokenizer(tokenizer_model=path)


# --- GGUF byte-level BPE ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def transformers_smollm2_tokenizer(smollm2_path):
    transformers = require_module("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)


@pytest.mark.slow
def test_gguf_ids_match_transformers(smollm2_tokenizer, transformers_smollm2_tokenizer, sst_dev_path):
    texts = sst_sentences(sst_dev_path) + NON_ASCII + ["<|im_start|>user\nHi there!<|im_end|>"]
    for text in texts:
        expected = transformers_smollm2_tokenizer.encode(text, add_special_tokens=False)
        assert smollm2_tokenizer.encode(text, bos=False, eos=False) == expected, text


def test_gguf_digits_are_split_like_llama_cpp(smollm2_tokenizer):
    """SmolLM2's pre-tokenizer ("smollm") isolates every digit before GPT-2's split, as llama.cpp
    and SmolLM2's own tokenizer.json do. (transformers' GGUF reader applies GPT-2's split only,
    so " 5" after a space differs there: it gives "Ġ", "Ġ", "5" where we give "ĠĠ", "5".)"""
    ids = smollm2_tokenizer.encode("x  5 2024", bos=False, eos=False)
    pieces = [smollm2_tokenizer.decode([i]) for i in ids]
    assert pieces == ["x", "  ", "5", " ", "2", "0", "2", "4"]


def test_gguf_special_ids_and_decode(smollm2_tokenizer, sst_dev_path):
    tok = smollm2_tokenizer
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.n_words) == (1, 2, 2, 49152)
    # SmolLM2's GGUF says add_bos_token = false (its BOS id is the chat marker <|im_start|>):
    # bos=True then adds nothing, as transformers' tokenizer for the model does.
    assert tok.add_bos is False
    for text in sst_sentences(sst_dev_path) + NON_ASCII:
        ids = tok.encode(text, bos=True, eos=True)
        assert ids == tok.encode(text, bos=False, eos=False) + [tok.eos_id]
        assert tok.decode(ids) == text  # byte-level BPE is lossless; special tokens are dropped


def test_tokenizer_for_checkpoint(smollm2_path, tokenizer_model_path, monkeypatch, tmp_path):
    import tokenizer
    assert tokenizer_for_checkpoint(smollm2_path).n_words == 49152
    checkpoint = tmp_path / "model.pt"
    torch.save({"model_args": {}, "model": {}}, checkpoint)  # its content does not matter here
    monkeypatch.setattr(tokenizer, "TOKENIZER_MODEL", tokenizer_model_path)
    llama = tokenizer_for_checkpoint(checkpoint, max_len=5)
    assert llama.n_words == 32000 and llama.max_len == 5


def test_gguf_without_tokenizer_is_refused(tmp_path):
    path = tmp_path / "bare.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"bare\.gguf.*tokenizer\.ggml\.model"):
        Tokenizer(tokenizer_model=path)


# --------------------------------------------------------------------------------------------
# The character vocabulary, the record a checkpoint carries, training a SentencePiece model


def test_char_tokenizer_reserves_specials_and_maps_unknown_characters():
    from tokenizer import CHAR_BOS, CHAR_EOS, CHAR_UNK

    tokenizer = Tokenizer.from_corpus_chars("abca\n")
    assert tokenizer.n_words == 4 + 4  # <unk> <s> </s> <pad>, then "\n", "a", "b", "c"
    ids = tokenizer.encode("cab\nz", bos=True, eos=True)
    assert ids == [CHAR_BOS, 7, 5, 6, 4, CHAR_UNK, CHAR_EOS]
    assert tokenizer.decode(ids) == "cab\n"  # specials and the unknown leave no trace
    assert len({tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id}) == 4


# bpe builds SmolLM2's tokenizer afresh from its GGUF file: seconds, for a 49k-token vocabulary
@pytest.mark.parametrize("kind", ["char", "sentencepiece", pytest.param("bpe", marks=pytest.mark.slow)])
def test_a_record_survives_a_weights_only_checkpoint(kind, tokenizer_model_path, smollm2_path, tmp_path):
    original = {"char": lambda: Tokenizer.from_corpus_chars("Hello, world 123"),
                "sentencepiece": lambda: Tokenizer(tokenizer_model=tokenizer_model_path),
                "bpe": lambda: Tokenizer(tokenizer_model=smollm2_path)}[kind]()
    torch.save({"tokenizer": original.to_record()}, tmp_path / "c.pt")
    restored = Tokenizer.from_record(torch.load(tmp_path / "c.pt", weights_only=True)["tokenizer"])
    text = "Hello, world 123 héllo"
    assert restored.kind == kind
    assert restored.encode(text, bos=True, eos=True) == original.encode(text, bos=True, eos=True)
    assert (restored.n_words, restored.bos_id, restored.eos_id, restored.pad_id, restored.add_bos) == \
        (original.n_words, original.bos_id, original.eos_id, original.pad_id, original.add_bos)
    assert restored.chat_template == original.chat_template
    assert (kind == "bpe") == (restored.chat_template is not None)  # SmolLM2's GGUF holds one


def test_saved_char_and_sentencepiece_files_load_back(tokenizer_model_path, tmp_path):
    for original in (Tokenizer.from_corpus_chars("xyz"), Tokenizer(tokenizer_model=tokenizer_model_path)):
        path = original.save(tmp_path)
        assert Tokenizer(tokenizer_model=path).encode("zyx", True, True) == original.encode("zyx", True, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["char_tokenizer.json", "tokenizer.model"]


def test_tokenizer_for_checkpoint_prefers_the_record_it_carries(tmp_path):
    chars = Tokenizer.from_corpus_chars("only these")
    torch.save({"model_args": {}, "model": {}, "tokenizer": chars.to_record()}, tmp_path / "ours.pt")
    assert tokenizer_for_checkpoint(tmp_path / "ours.pt").kind == "char"


def test_train_sentencepiece_on_a_corpus(tmp_path):
    from tokenizer import train_sentencepiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log.\n" * 200, encoding="utf-8")
    tokenizer = train_sentencepiece(corpus, 300, tmp_path)
    assert tokenizer.n_words == 300 and (tmp_path / "tokenizer.model").is_file()
    assert tokenizer.decode(tokenizer.encode("the cat sat.", True, False)) == "the cat sat."
    assert len(tokenizer.encode("the cat sat on the mat.", False, False)) < 12  # merges were learned
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers
    with pytest.raises(ValueError, match=r"--train_tokenizer 100000.*Vocabulary size too high"):
        train_sentencepiece(corpus, 100_000, tmp_path)
