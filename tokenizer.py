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
"""

from pathlib import Path

import sentencepiece
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as BPETokenizer

from checkpoints import GGUF_MAGIC, CheckpointError, checkpoint_format, gguf_metadata, open_gguf
from utils import REPO_ROOT, require_file

TOKENIZER_MODEL = REPO_ROOT / "tokenizer.model"
HOW_TO_GET = "run `bash setup.sh` to download it, or `MINLLAMA_ASSETS=<mirror> bash setup.sh` to copy it"

CONTROL = 3  # llama.cpp's token type for special tokens (1 is a normal token)


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

    Attributes: `bos_id`, `eos_id`, `pad_id` (SentencePiece: the byte piece `<0x00>`, id 3,
    a real embedding row for a byte that never occurs in text; GGUF: its padding id), `n_words`,
    and `add_bos`: whether the model saw BOS in front of its training texts. Llama 2 did; a GGUF
    file says (`tokenizer.ggml.add_bos_token`), and SmolLM2's did not: its BOS id is the chat
    marker `<|im_start|>`, which would make a plain text look like the start of a chat turn.
    """

    def __init__(self, max_len: int | None = None, tokenizer_model=None):
        self.model_path = require_file(tokenizer_model or TOKENIZER_MODEL, HOW_TO_GET)
        self.max_len = max_len
        with open(self.model_path, "rb") as f:
            is_gguf = f.read(4) == GGUF_MAGIC
        if is_gguf:
            self._load_gguf(self.model_path)
        else:
            self._load_sentencepiece(self.model_path)

    def _load_sentencepiece(self, path: Path):
        try:
            model = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as error:
            raise ValueError(f"{path}: not a SentencePiece model or a GGUF file: {error}") from None
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

        if metadata("model") != "gpt2":
            raise CheckpointError(f"{path}: GGUF tokenizer {metadata('model')!r} is not supported "
                                  "(only byte-level BPE, 'gpt2')")
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

        self.n_words = len(pieces)
        self.bos_id, self.eos_id = metadata("bos_token_id"), metadata("eos_token_id")
        self.add_bos = bool(gguf_metadata(reader, "tokenizer.ggml.add_bos_token", True))
        self.pad_id = gguf_metadata(reader, "tokenizer.ggml.padding_token_id", self.eos_id)
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
    """The tokenizer a checkpoint was trained with: a GGUF file's own, else Llama 2's tokenizer.model."""
    own = checkpoint_format(require_file(checkpoint)) == "gguf"
    return Tokenizer(max_len, tokenizer_model=checkpoint if own else None)
