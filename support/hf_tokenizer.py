"""Tokenizers in Hugging Face's files: `tokenizer.json` with `tokenizer_config.json`, read and written.

`tokenizer.json` is the `tokenizers` library's whole pipeline (normalizer, pre-tokenizer, model,
decoder, post-processor, added tokens) in one JSON document, and transformers loads it without
any other package. `tokenizer_config.json` says which tokens are BOS, EOS and padding, whether a
text starts with BOS (`add_bos_token`) and the chat template (`chat_template`, or a
`chat_template.jinja` file beside it since transformers 5).

A SentencePiece BPE model (Llama 2's tokenizer.model) is written as the equivalent `tokenizers`
BPE: the same pieces and ids, byte fallback, "▁" for a space with one in front of the text, and
merges ordered like SentencePiece's scores. SentencePiece merges, at every step, the adjacent pair
whose union is the best-scored piece; a `tokenizers` BPE merges the pair earliest in its merge
list; listing the merges by the score of their result makes the two the same. (transformers
could also read tokenizer.model itself, but only with the protobuf package installed.)
"""

import json
from pathlib import Path

from tokenizers import AddedToken
from tokenizers import Tokenizer as BPETokenizer
from tokenizers import decoders, models, normalizers, processors

from support.errors import CheckpointError
from utils import write_atomically

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def tokenizer_json_in(folder: Path) -> Path:
    """The tokenizer.json of a Hugging Face folder, or CheckpointError saying it lacks one."""
    if not (folder / TOKENIZER_JSON).is_file():
        raise CheckpointError(f"{folder}: has no {TOKENIZER_JSON}, so its tokenizer is unknown "
                              "(pass a tokenizer file explicitly, e.g. --tokenizer)")
    return folder / TOKENIZER_JSON


def read_tokenizer_json(path: Path) -> dict:
    """What tokenizer.Tokenizer needs from a tokenizer.json and the files beside it:
    {"bpe", "bos_id", "eos_id", "pad_id", "add_bos", "chat_template"}."""
    try:
        bpe = BPETokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for a file it cannot parse
        raise CheckpointError(f"{path}: not a tokenizer.json the `tokenizers` library can read: {error}") from None
    folder = path.parent
    config = _json_or_empty(folder / TOKENIZER_CONFIG)
    model_config = _json_or_empty(folder / "config.json")

    def special_id(name: str) -> int | None:
        token = config.get(f"{name}_token")
        if isinstance(token, dict):  # older files: an AddedToken as {"content": "<s>", ...}
            token = token.get("content")
        if token is not None:
            token_id = bpe.token_to_id(token)
            if token_id is None:
                raise CheckpointError(f"{folder / TOKENIZER_CONFIG}: {name}_token {token!r} is not in {path.name}")
            return token_id
        return model_config.get(f"{name}_token_id") if isinstance(model_config.get(f"{name}_token_id"), int) else None

    bos_id, eos_id, pad_id = special_id("bos"), special_id("eos"), special_id("pad")
    if eos_id is None:
        raise CheckpointError(f"{folder}: no EOS token: {TOKENIZER_CONFIG} (eos_token) or config.json "
                              "(eos_token_id) must name one")
    add_bos = config.get("add_bos_token")
    if add_bos is None:  # then the tokenizer's own post-processor decides, as in Llama 3's files
        with_specials, without = bpe.encode("a").ids, bpe.encode("a", add_special_tokens=False).ids
        add_bos = bos_id is not None and with_specials[:1] == [bos_id] and with_specials[1:] == without
    template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template is None and (folder / CHAT_TEMPLATE_FILE).is_file():
        template = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    return {"bpe": bpe, "bos_id": eos_id if bos_id is None else bos_id, "eos_id": eos_id,
            "pad_id": eos_id if pad_id is None else pad_id, "add_bos": bool(add_bos) and bos_id is not None,
            "chat_template": template}


def _json_or_empty(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON: {error}") from None
    return content if isinstance(content, dict) else {}


# llama.cpp's piece types (gguf.TokenType), which both GGUF files and this module use
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = range(1, 7)


def sentencepiece_pieces(sp) -> tuple[list[str], list[float], list[int]]:
    """The pieces, scores and llama.cpp piece types of a SentencePieceProcessor."""
    ids = range(sp.vocab_size())
    kinds = [UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else BYTE if sp.is_byte(i)
             else UNUSED if sp.is_unused(i) else NORMAL for i in ids]
    return [sp.id_to_piece(i) for i in ids], [sp.get_score(i) for i in ids], kinds


def sentencepiece_as_bpe(pieces: list[str], scores: list[float], kinds: list[int]) -> BPETokenizer:
    """A `tokenizers` BPE that encodes and decodes like the SentencePiece BPE model with these
    pieces, scores and piece types (see sentencepiece_pieces; a GGUF file stores the same three)."""
    vocab = {piece: i for i, piece in enumerate(pieces)}
    mergeable = {piece for piece, kind in zip(pieces, kinds) if kind in (NORMAL, USER_DEFINED)}
    merges = []  # (score of the union, left id, right id, left, right)
    for piece in mergeable:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                merges.append((scores[vocab[piece]], vocab[left], vocab[right], left, right))
    merges.sort(key=lambda merge: (-merge[0], merge[1], merge[2]))  # best union first; ties by id

    unk = next((piece for piece, kind in zip(pieces, kinds) if kind == UNKNOWN), None)
    bpe = BPETokenizer(models.BPE(vocab=vocab, merges=[(left, right) for *_, left, right in merges],
                                  unk_token=unk, fuse_unk=True, byte_fallback=True))
    # A space is "▁", and one is put in front of the text (SentencePiece's add_dummy_prefix), even
    # before a text that starts with a space (which pre_tokenizers.Metaspace would not do).
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    # Control pieces (<s>, </s>) written in a text are read as themselves, as transformers does
    # (SentencePiece would spell them out); decode leaves them out.
    bpe.add_special_tokens([AddedToken(piece, special=True, normalized=False)
                            for piece, kind in zip(pieces, kinds) if kind in (CONTROL, UNKNOWN)])
    return bpe


def char_as_bpe(specials: tuple[str, ...], chars: str) -> BPETokenizer:
    """A character vocabulary as a `tokenizers` BPE without merges: one id per character."""
    vocab = {piece: i for i, piece in enumerate([*specials, *chars])}
    bpe = BPETokenizer(models.BPE(vocab=vocab, merges=[], unk_token=specials[0]))
    bpe.decoder = decoders.Fuse()
    bpe.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece in specials])
    return bpe


def write_tokenizer_files(tokenizer, folder: Path, max_seq_len: int | None = None) -> Path:
    """Write tokenizer.json and tokenizer_config.json for a tokenizer.Tokenizer into `folder`, so
    that transformers' AutoTokenizer, and Tokenizer(tokenizer_model=...) here, give the ids our
    `encode(text, bos=True, eos=False)` gives. Returns the tokenizer.json path."""
    if tokenizer.kind == "bpe":
        bpe = BPETokenizer.from_str(tokenizer.bpe.to_str())
    elif tokenizer.kind == "sentencepiece":
        bpe = sentencepiece_as_bpe(*sentencepiece_pieces(tokenizer.sp))
    else:
        bpe = char_as_bpe(tokenizer.char_specials, tokenizer.chars)
    bos, eos, pad = (bpe.id_to_token(i) for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id))
    if tokenizer.add_bos:  # transformers' tokenizer(text) adds what the post-processor says
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_id)])
    else:
        bpe.post_processor = None
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
              "pad_token": pad, "add_bos_token": tokenizer.add_bos, "add_eos_token": False,
              "clean_up_tokenization_spaces": False}
    if max_seq_len is not None:
        config["model_max_length"] = max_seq_len
    if tokenizer.chat_template is not None:
        config["chat_template"] = tokenizer.chat_template
    write_atomically(folder / TOKENIZER_CONFIG, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    write_atomically(folder / TOKENIZER_JSON, bpe.to_str(pretty=True))
    return folder / TOKENIZER_JSON
