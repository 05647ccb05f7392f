"""Text <-> token ids, for the two kinds of vocabulary our checkpoints come with.

- Llama 2's SentencePiece model (`tokenizer.model`, 32000 pieces; Kudo & Richardson 2018):
  BPE over Unicode characters, a space written as the piece "▁" and prepended to the text,
  unknown characters spelled as byte pieces `<0x00>`..`<0xFF>` ("byte fallback").
  This is what stories42M and the other TinyStories models were trained with.
- A GGUF checkpoint's own vocabulary (SmolLM2): GPT-2 style byte-level BPE (Radford et al.
  2019, Sec. 2.2). Text is first split into words by a regular expression, every byte is
  written as one of 256 printable characters (a space becomes "Ġ"), and the merges, learned
  pair by pair, are applied in order. GGUF stores the pieces (`tokenizer.ggml.tokens`), the
  merges (`tokenizer.ggml.merges`, "a b" strings), the piece types (3 = control, e.g.
  `<|im_start|>`), the special ids and the name of the pre-tokenizer (`tokenizer.ggml.pre`),
  which we rebuild with the `tokenizers` library. A GGUF checkpoint thus brings its own tokenizer.
- A character vocabulary (`--tokenizer char`, for pre-training from scratch): one id per character
  of the corpus, the smallest tokenizer there is (Karpathy's char-rnn and nanoGPT's Shakespeare).
- A new SentencePiece BPE model trained on a corpus (`train_sentencepiece`, as llama2.c trains its
  small TinyStories vocabularies).

A tokenizer travels with the checkpoints we write: `to_record()` turns it into tensors and builtins
(what `torch.load(weights_only=True)` reads), `Tokenizer.from_record` back, so a model trained here
finds its own tokenizer without a flag (`tokenizer_for_checkpoint`).
"""

import json
import os
from pathlib import Path

import sentencepiece
import torch
from tokenizers import AddedToken
from tokenizers import Tokenizer as BPETokenizer
from tokenizers import decoders, models, pre_tokenizers

from support.checkpoints import (GGUF_MAGIC, CheckpointError, checkpoint_format, gguf_metadata, load_torch_file,
                                 open_gguf)
from utils import REPO_ROOT, atomic_path, require_file

TOKENIZER_MODEL = REPO_ROOT / "tokenizer.model"
HOW_TO_GET = "run `bash setup.sh` to download it, or `MINLLAMA_ASSETS=<mirror> bash setup.sh` to copy it"

CONTROL = 3  # llama.cpp's token type for special tokens (1 is a normal token)
# The character vocabulary's reserved ids, in SentencePiece's order; characters start at 4.
CHAR_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
CHAR_UNK, CHAR_BOS, CHAR_EOS, CHAR_PAD = range(len(CHAR_SPECIALS))


def _gpt2_split():
    # GPT-2's regex: contractions, letters, digits, punctuation runs, spaces (add_prefix_space=False:
    # unlike SentencePiece, byte-level BPE does not invent a space before the first word).
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _gpt2_split_digits():
    # llama.cpp's "smollm" (as StarCoder's): GPT-2's split, but every digit is a word of its own.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2_split()])


# tokenizer.ggml.pre -> how to split text into words before the merges
GGUF_PRE_TOKENIZERS = {"default": _gpt2_split, "gpt2": _gpt2_split,
                       "smollm": _gpt2_split_digits, "starcoder": _gpt2_split_digits}


class Tokenizer:
    """Tokenizer(max_len=None, tokenizer_model=None).

    `tokenizer_model` is a SentencePiece `.model` file (default: tokenizer.model in the
    repository root, put there by setup.sh) or a GGUF checkpoint, whose own byte-level BPE
    vocabulary is used; the kind is told from the file's content, not its name.

    `max_len`, when set, truncates every encoding to its first `max_len` ids, counting the
    BOS/EOS ids asked for: the start of the text is kept, and an EOS falls off a text too
    long to end within max_len.

    A character vocabulary is a JSON file `{"type": "char", "chars": "..."}` (what `save` writes).
    A Hugging Face `tokenizer.json`, or a folder holding one, gives a "bpe" tokenizer with the
    special ids, BOS rule and chat template of the `tokenizer_config.json` beside it (hf_tokenizer.py).

    Attributes: `bos_id`, `eos_id`, `pad_id` (SentencePiece: the byte piece `<0x00>`, id 3,
    a real embedding row for a byte that never occurs in text; GGUF: its padding id), `n_words`,
    and `add_bos`: whether the model saw BOS in front of its training texts. Llama 2 did; a GGUF
    file says (`tokenizer.ggml.add_bos_token`), and SmolLM2's did not: its BOS id is the chat
    marker `<|im_start|>`, which would make a plain text look like the start of a chat turn.
    `kind` is "sentencepiece", "bpe" or "char", and the vocabulary itself is `sp` (the
    SentencePieceProcessor), `bpe` (the `tokenizers.Tokenizer`) or `chars` (a str) accordingly;
    `chat_template` is the model's Jinja chat template, or None.
    """

    def __init__(self, max_len: int | None = None, tokenizer_model=None):
        if tokenizer_model is not None and Path(tokenizer_model).is_dir():  # a Hugging Face folder
            from support.hf_tokenizer import tokenizer_json_in
            tokenizer_model = tokenizer_json_in(Path(tokenizer_model))
        self.model_path = require_file(tokenizer_model or TOKENIZER_MODEL, HOW_TO_GET)
        self.max_len = max_len
        self.chat_template = None
        with open(self.model_path, "rb") as f:
            start = f.read(4)
        if start == GGUF_MAGIC:
            self._load_gguf(self.model_path)
        elif start.lstrip()[:1] == b"{":
            self._load_json(self.model_path)
        else:
            self._load_sentencepiece(self.model_path)

    @classmethod
    def from_record(cls, record: dict, max_len: int | None = None) -> "Tokenizer":
        """The tokenizer that `to_record()` described (as stored in a checkpoint)."""
        tokenizer = cls.__new__(cls)
        tokenizer.model_path, tokenizer.max_len = None, max_len
        tokenizer.chat_template = record.get("chat_template")
        kind = record.get("kind")
        if kind == "sentencepiece":
            tokenizer._use_sentencepiece(sentencepiece.SentencePieceProcessor(
                model_proto=record["model_proto"].numpy().tobytes()))
        elif kind == "bpe":
            tokenizer._use_bpe(BPETokenizer.from_str(record["tokenizer_json"]), record["bos_id"],
                               record["eos_id"], record["pad_id"], record["add_bos"])
        elif kind == "char":
            tokenizer._use_chars(record["chars"])
        else:
            raise ValueError(f"unknown tokenizer record kind {kind!r} (known: sentencepiece, bpe, char)")
        return tokenizer

    @classmethod
    def from_corpus_chars(cls, text: str, max_len: int | None = None) -> "Tokenizer":
        """A character vocabulary: every distinct character of `text`, in sorted order."""
        return cls.from_record({"kind": "char", "chars": "".join(sorted(set(text)))}, max_len)

    def to_record(self) -> dict:
        """Tensors and builtins that describe this tokenizer completely (see from_record)."""
        if self.kind == "sentencepiece":
            proto = self.sp.serialized_model_proto()
            record = {"kind": "sentencepiece", "model_proto": torch.frombuffer(bytearray(proto), dtype=torch.uint8)}
        elif self.kind == "bpe":
            record = {"kind": "bpe", "tokenizer_json": self.bpe.to_str(), "bos_id": self.bos_id,
                      "eos_id": self.eos_id, "pad_id": self.pad_id, "add_bos": self.add_bos}
        else:
            record = {"kind": "char", "chars": self.chars}
        return {**record, "chat_template": self.chat_template}

    def save(self, folder) -> Path:
        """Write the vocabulary as a file `Tokenizer(tokenizer_model=...)` reads back: tokenizer.model
        (SentencePiece), tokenizer.json (byte-level BPE, the `tokenizers` format) or
        char_tokenizer.json. Returns its path."""
        if self.kind == "sentencepiece":
            path, data = Path(folder) / "tokenizer.model", self.sp.serialized_model_proto()
        elif self.kind == "bpe":  # with tokenizer_config.json beside it: special ids, BOS rule, template
            from support.hf_tokenizer import write_tokenizer_files
            return write_tokenizer_files(self, Path(folder))
        else:
            path = Path(folder) / "char_tokenizer.json"
            data = json.dumps({"type": "char", "chars": self.chars}).encode()
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)
        return path

    def _load_json(self, path: Path):
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a valid JSON tokenizer file: {error}") from None
        if "model" in content:  # the `tokenizers` library's tokenizer.json, as in Hugging Face folders
            from support.hf_tokenizer import read_tokenizer_json
            found = read_tokenizer_json(path)
            self._use_bpe(found["bpe"], found["bos_id"], found["eos_id"], found["pad_id"], found["add_bos"])
            self.chat_template = found["chat_template"]
            return
        if content.get("type") != "char" or not isinstance(content.get("chars"), str):
            raise ValueError(f"{path}: a JSON tokenizer file must be {{\"type\": \"char\", \"chars\": \"...\"}}")
        self._use_chars(content["chars"])

    def _use_chars(self, chars: str):
        self.kind, self.chars, self.char_specials = "char", chars, CHAR_SPECIALS
        self.n_words = len(CHAR_SPECIALS) + len(chars)
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = CHAR_BOS, CHAR_EOS, CHAR_PAD, CHAR_UNK
        self.add_bos = True
        ids = {c: i for i, c in enumerate(chars, start=len(CHAR_SPECIALS))}
        self._encode = lambda text: [ids.get(c, CHAR_UNK) for c in text]
        self._decode = lambda token_ids: "".join(chars[i - len(CHAR_SPECIALS)] for i in token_ids
                                                 if len(CHAR_SPECIALS) <= i < self.n_words)

    def _load_sentencepiece(self, path: Path):
        try:
            model = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as error:
            raise ValueError(f"{path}: not a SentencePiece model or a GGUF file: {error}") from None
        self._use_sentencepiece(model)

    def _use_sentencepiece(self, model):
        self.kind, self.sp = "sentencepiece", model
        self.n_words = model.vocab_size()
        self.bos_id, self.eos_id = model.bos_id(), model.eos_id()
        self.add_bos = True
        # piece_to_id answers the unknown id for a piece the model lacks: then fall back to EOS.
        zero_byte = model.piece_to_id("<0x00>")
        self.pad_id = zero_byte if model.id_to_piece(zero_byte) == "<0x00>" else self.eos_id
        self._encode = model.encode
        self._decode = model.decode  # drops BOS/EOS/unknown markers

    def _load_gguf(self, path: Path):
        reader = open_gguf(path)

        def metadata(key):
            value = gguf_metadata(reader, f"tokenizer.ggml.{key}")
            if value is None:
                raise CheckpointError(f"{path}: GGUF metadata lacks tokenizer.ggml.{key}")
            return value

        vocabulary = metadata("model")
        if vocabulary not in ("gpt2", "llama"):
            raise CheckpointError(f"{path}: GGUF tokenizer {vocabulary!r} is not supported "
                                  "(only byte-level BPE, 'gpt2', and SentencePiece BPE, 'llama')")
        if vocabulary == "llama":  # rebuilt as the `tokenizers` BPE that gives SentencePiece's ids
            from support.hf_tokenizer import sentencepiece_as_bpe
            bpe = sentencepiece_as_bpe(metadata("tokens"), metadata("scores"), metadata("token_type"))
        else:
            pre = gguf_metadata(reader, "tokenizer.ggml.pre", "default")
            if pre not in GGUF_PRE_TOKENIZERS:
                raise CheckpointError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported "
                                      f"(known: {', '.join(sorted(GGUF_PRE_TOKENIZERS))})")
            pieces, types = metadata("tokens"), metadata("token_type")
            vocab = {piece: i for i, piece in enumerate(pieces)}
            merges = [tuple(merge.split(" ")) for merge in metadata("merges")]
            bpe = BPETokenizer(models.BPE(vocab=vocab, merges=merges))
            bpe.pre_tokenizer = GGUF_PRE_TOKENIZERS[pre]()
            bpe.decoder = decoders.ByteLevel()
            # Control pieces such as <|im_start|> are matched whole in the text (chat templates write
            # them), never split into bytes; decode leaves them out, as SentencePiece drops BOS/EOS.
            bpe.add_special_tokens([AddedToken(piece, special=True, normalized=False)
                                    for piece, kind in zip(pieces, types) if kind == CONTROL])

        eos_id = metadata("eos_token_id")
        self._use_bpe(bpe, metadata("bos_token_id"), eos_id,
                      gguf_metadata(reader, "tokenizer.ggml.padding_token_id", eos_id),
                      bool(gguf_metadata(reader, "tokenizer.ggml.add_bos_token", True)))
        self.chat_template = gguf_metadata(reader, "tokenizer.chat_template")

    def _use_bpe(self, bpe: BPETokenizer, bos_id: int, eos_id: int, pad_id: int, add_bos: bool):
        self.kind, self.bpe = "bpe", bpe
        self.n_words = bpe.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eos_id, self.pad_id, self.add_bos = bos_id, eos_id, pad_id, add_bos
        self._encode = lambda text: bpe.encode(text, add_special_tokens=False).ids
        self._decode = lambda ids: bpe.decode(ids, skip_special_tokens=True)

    def encode(self, s: str, bos: bool, eos: bool) -> list[int]:
        """Token ids of `s`, with BOS in front and/or EOS at the end as asked, cut to max_len.
        bos=True adds BOS only for a model that starts its texts with one (see `add_bos`)."""
        if not isinstance(s, str):
            raise TypeError(f"encode expects a str, got {type(s).__name__}")
        ids = self._encode(s)
        if bos and self.add_bos:
            ids = [self.bos_id] + ids
        if eos:
            ids = ids + [self.eos_id]
        return ids if self.max_len is None else ids[:self.max_len]

    def decode(self, ids) -> str:
        """The text of a list (or 1-D tensor) of ids; special tokens (BOS, EOS, ...) are left out."""
        return self._decode([int(i) for i in ids])


def tokenizer_for_checkpoint(checkpoint, max_len: int | None = None) -> Tokenizer:
    """The tokenizer a checkpoint was trained with: the record a checkpoint of ours carries, a GGUF
    file's own vocabulary, else Llama 2's tokenizer.model (llama2.c's and the course's files)."""
    path = Path(checkpoint) if Path(checkpoint).is_dir() else require_file(checkpoint)
    kind = checkpoint_format(path)
    if kind in ("gguf", "hf"):
        return Tokenizer(max_len, tokenizer_model=path)
    if kind == "torch":
        record = load_torch_file(path, mmap=True).get("tokenizer")
        if record is not None:
            return Tokenizer.from_record(record, max_len)
    return Tokenizer(max_len)


def train_sentencepiece(corpus, vocab_size: int, folder) -> Tokenizer:
    """Train a SentencePiece BPE vocabulary of `vocab_size` pieces on the text file `corpus`, with
    llama2.c's settings for its TinyStories vocabularies (byte fallback, so no character is ever
    unknown; digits split; text kept as written), and save it as `folder`/tokenizer.model."""
    folder = Path(folder)
    prefix = folder / f".tokenizer-{os.getpid()}"
    trained, vocab = Path(f"{prefix}.model"), Path(f"{prefix}.vocab")
    try:
        sentencepiece.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(prefix), model_type="bpe", vocab_size=vocab_size,
            character_coverage=1.0, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
            normalization_rule_name="identity", max_sentence_length=1 << 16, num_threads=os.cpu_count() or 1,
            unk_surface=r" \342\201\207 ", minloglevel=2)
        os.replace(trained, folder / "tokenizer.model")
    except RuntimeError as error:
        raise ValueError(f"--train_tokenizer {vocab_size}: SentencePiece cannot train that vocabulary on "
                         f"{corpus}: {str(error).strip().split('] ')[-1]}") from None
    finally:
        for leftover in (trained, vocab):
            leftover.unlink(missing_ok=True)
    return Tokenizer(tokenizer_model=folder / "tokenizer.model")
