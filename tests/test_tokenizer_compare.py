"""Tests for tokenizer_compare.py: its figures against sentencepiece itself and the character
baseline, the shipped non-Latin samples, skipped and missing tokenizer files."""

import io
import unicodedata

import pytest
import sentencepiece

from minllama.tools import tokenizer_compare
from minllama.tools.tokenizer_compare import SAMPLES, main, statistics
from tokenizer import Tokenizer

SCRIPTS = {"english": "LATIN", "persian": "ARABIC", "hindi": "DEVANAGARI", "chinese": "CJK"}


def test_samples_are_in_their_scripts():
    for path in SAMPLES:
        letters = [c for c in path.read_text(encoding="utf-8") if c.isalpha()]
        script = SCRIPTS[path.stem]
        assert len(letters) > 50 and all(unicodedata.name(c).startswith(script) for c in letters), path


def test_character_baseline_is_one_token_per_character():
    text = "नमस्ते, 世界!"
    stats = statistics(Tokenizer.from_corpus_chars(text), text)
    assert stats["tokens"] == len(text) and stats["tokens_per_char"] == 1.0 and stats["round_trip"]
    assert stats["tokens_per_word"] == len(text) / 2 and stats["rarest"] == []


def test_sentencepiece_figures_match_sentencepiece(tokenizer_model_path):
    reference = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_model_path))
    ours = Tokenizer(tokenizer_model=tokenizer_model_path)
    for path in SAMPLES:
        text = path.read_text(encoding="utf-8").strip()
        stats = statistics(ours, text)
        ids = reference.encode(text)
        assert stats["tokens"] == len(ids)
        assert stats["part_char_tokens"] == sum(reference.is_byte(i) for i in ids)  # byte fallback pieces
        assert stats["round_trip"] == (reference.decode(ids) == text)
        for i, piece in stats["rarest"]:
            assert reference.id_to_piece(i).lstrip("▁") == piece.lstrip()


def test_byte_level_bpe_splits_non_latin_characters(smollm2_tokenizer):
    english, chinese = (statistics(smollm2_tokenizer, path.read_text(encoding="utf-8")) for path in
                        (SAMPLES[0], SAMPLES[3]))
    assert english["part_char_tokens"] == 0 and chinese["part_char_tokens"] > 0
    assert chinese["tokens_per_char"] > 4 * english["tokens_per_char"]
    assert english["round_trip"] and chinese["round_trip"]
    assert english["longest"][0] == " perhaps"


def test_cli_prints_every_tokenizer_and_skips_missing_ones(monkeypatch, tmp_path, tokenizer_model_path):
    monkeypatch.setattr(tokenizer_compare, "smollm2_gguf_path", lambda: None)
    monkeypatch.setattr(tokenizer_compare, "TOKENIZER_MODEL", tmp_path / "tokenizer.model")
    text = tmp_path / "mixed.txt"
    text.write_text("Hello there, world. سلام دنیا\n", encoding="utf-8")
    out = io.StringIO()
    assert main(["--text", str(text), "--tokenizer", str(tokenizer_model_path)], out=out) == 0
    printed = out.getvalue()
    assert "skipped SmolLM2" in printed and "skipped Llama 2" in printed
    assert f"== {text}: 29 characters, 5 words ==" in printed
    assert "\ncharacters" in printed and "\ntokenizer.model" in printed


@pytest.mark.parametrize("flag", ["--text", "--tokenizer"])
def test_missing_file_is_an_error(tmp_path, capsys, flag):
    with pytest.raises(SystemExit):
        main([flag, str(tmp_path / "absent.txt")])
    assert f"file not found: {tmp_path / 'absent.txt'}" in capsys.readouterr().err


def test_text_that_is_not_utf8_is_an_error(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(SystemExit):
        main(["--text", str(path)])
    assert "latin1.txt: not UTF-8 text" in capsys.readouterr().err
