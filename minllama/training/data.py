"""Everything between a file on disk and a batch of token ids.

Two kinds of data feed the training loop:

- Labelled sentences for classification: `LABEL ||| SENTENCE` lines (SST, CFIMDB), encoded once,
  then grouped into batches of similar length (little compute spent on padding) and right-padded
  with an attention mask (`collate`).
- Plain text for language modelling (pre-training, continued pre-training): encoded once into a
  flat array of token ids, cached on disk as a memory-mapped file, from which random windows of
  `max_seq_len + 1` tokens are cut (inputs and the same tokens shifted by one as targets), as
  llama2.c and nanoGPT do.

Every reading error names the file and the line (or byte), so a user can fix the input.
"""

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils import atomic_path


class InputError(ValueError):
    """A problem with the run's inputs that the user can fix; the command line prints it in one line."""


# --------------------------------------------------------------------------------------------
# Reading text


def read_text(path, what: str = "file") -> str:
    """The whole of a UTF-8 text file; a byte that is not UTF-8 is named by its offset and line. A
    byte-order mark (which Windows editors put at the start of "UTF-8" files) is not text: dropped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise InputError(f"{path}: byte {error.start} (line {line}) is {data[error.start:error.start + 1]!r}, "
                         "which is not UTF-8: save the file as UTF-8") from None


@dataclass(frozen=True)
class Example:
    label: int
    sentence: str  # as in the file, without surrounding whitespace
    where: str  # "file:line", for error messages


def read_examples(path, limit: int | None = None) -> list[Example]:
    """The `LABEL ||| SENTENCE` lines of a data file (the first `limit` of them, if set).
    Blank lines are skipped (a trailing newline at the end of a file is common)."""
    path = Path(path)
    examples = []
    for number, line in enumerate(read_text(path, "data file").splitlines(), start=1):
        if limit is not None and len(examples) == limit:
            break
        if not line.strip():
            continue
        where = f"{path}:{number}"
        label, separator, sentence = line.partition(" ||| ")
        if not separator:
            raise InputError(f"{where}: expected 'LABEL ||| SENTENCE', found no ' ||| ' in {line.strip()[:60]!r}")
        try:
            label = int(label)
        except ValueError:
            raise InputError(f"{where}: the label {label.strip()!r} is not an integer") from None
        sentence = sentence.strip()
        if not sentence:
            raise InputError(f"{where}: the sentence after ' ||| ' is empty")
        examples.append(Example(label, sentence, where))
    if not examples:
        raise InputError(f"{path}: the data file is empty")
    return examples


def stratified_sample(examples: list[Example], n: int, seed: int) -> list[Example]:
    """n examples drawn at random (seeded) so that every label keeps its share of the file
    (CA1's stratified sampling): each label gets floor(n * share), and the places left go to the
    labels with the largest remainders. The drawn examples keep their order in the file."""
    if n >= len(examples):
        return list(examples)
    by_label: dict[int, list[int]] = {}
    for index, example in enumerate(examples):
        by_label.setdefault(example.label, []).append(index)
    exact = {label: n * len(indices) / len(examples) for label, indices in by_label.items()}
    counts = {label: int(share) for label, share in exact.items()}
    for label in sorted(exact, key=lambda lab: (counts[lab] - exact[lab], lab))[:n - sum(counts.values())]:
        counts[label] += 1
    rng = random.Random(seed)
    drawn = [i for label in sorted(by_label) for i in rng.sample(by_label[label], counts[label])]
    return [examples[i] for i in sorted(drawn)]


def read_label_names(path) -> list[str]:
    """The label mapping: a JSON list of label names, label id i being names[i]."""
    try:
        names = json.loads(read_text(path, "label mapping"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        raise InputError(f"{path}: expected a JSON list of at least two label names, e.g. [\"bad\", \"good\"]")
    return names


def check_labels(examples: list[Example], label_names: list[str], mapping_path) -> None:
    """Every label must be an id of the mapping (0 .. len(label_names) - 1)."""
    for example in examples:
        if not 0 <= example.label < len(label_names):
            raise InputError(f"{example.where}: label {example.label} is outside the label mapping "
                             f"{mapping_path} (ids 0..{len(label_names) - 1})")


def check_mapping_size(train: list[Example], label_names: list[str], mapping_path, train_path,
                       limited: bool = False) -> None:
    """The training labels must use exactly the mapping's ids: a head with the wrong number of
    outputs would train without complaint and mean nothing. (A --limit sample may lack the top
    labels: then only the range is checked.)"""
    check_labels(train, label_names, mapping_path)
    n_used = max(example.label for example in train) + 1
    if n_used != len(label_names) and not limited:
        raise InputError(f"the label mapping {mapping_path} names {len(label_names)} labels, but the "
                         f"training labels in {train_path} use ids 0..{n_used - 1}: pass the matching --label-names")


def has_placeholder_labels(path) -> bool:
    """A data file whose labels all have one value (cfimdb-test: all 0) has no real labels.
    Decided on the whole file, so that a small --limit sample of real labels is not mistaken for it."""
    examples = read_examples(path)
    return len(examples) > 1 and len({example.label for example in examples}) == 1


def dataset_name(path) -> str:
    """'sst' for data/sst-dev.txt: the file name up to its first '-'."""
    return Path(path).stem.split("-")[0]


# --------------------------------------------------------------------------------------------
# Sentences -> batches


def encode_examples(examples: list[Example], tokenizer, max_len: int, suffix_ids=(),
                    max_sentence_len: int | None = None, desc: str = "", bos: bool = True) -> list[list[int]]:
    """BOS (for a model that uses one, unless bos is False: a cached prompt prefix holds it) +
    sentence tokens (+ suffix_ids, the zero-shot question), no EOS: the classifiers read the last
    real token, which should be the sentence's (or the question's) own last token.

    Only the sentence is ever shortened, so the question always survives: to max_sentence_len
    tokens if set, and to what fits in the model's context (max_len positions), with a warning."""
    start = [tokenizer.bos_id] if bos and tokenizer.add_bos else []  # SmolLM2's texts start without one
    room = max_len - len(start) - len(suffix_ids)
    if room < 1:
        raise InputError(f"the model's context ({max_len} positions) has no room for a sentence "
                         f"besides BOS and the {len(suffix_ids)}-token question")
    encoded, n_too_long = [], 0
    for example in tqdm(examples, desc=f"tokenize {desc}", unit=" lines", leave=False):
        ids = tokenizer.encode(example.sentence, bos=False, eos=False)[:max_sentence_len]
        if len(ids) > room:
            ids, n_too_long = ids[:room], n_too_long + 1
        encoded.append(start + ids + list(suffix_ids))
    if n_too_long:
        print(f"warning: {n_too_long} of {len(examples)} inputs in {desc} were longer than the model's "
              f"context ({max_len} tokens) and were truncated")
    return encoded


def length_sorted_batches(lengths: list[int], batch_size: int, rng: random.Random | None = None,
                          bucket_batches: int = 50) -> list[list[int]]:
    """Group example indices into batches of similar lengths, so little compute goes to padding.

    For evaluation (rng None) sort everything, longest first (a batch too big for memory fails
    at once). For training keep SGD's randomness: shuffle, sort only within buckets of
    `bucket_batches` batches, and shuffle the order of the batches."""
    order = list(range(len(lengths)))
    if rng is None:
        order.sort(key=lambda i: -lengths[i])  # stable: equal lengths keep input order
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    batches = []
    bucket_size = batch_size * bucket_batches
    for start in range(0, len(order), bucket_size):
        bucket = sorted(order[start:start + bucket_size], key=lambda i: lengths[i])
        batches += [bucket[i:i + batch_size] for i in range(0, len(bucket), batch_size)]
    rng.shuffle(batches)
    return batches


def epoch_rows(lengths: list[int], batch_size: int, seed: int):
    """rows_at(step): the example indices of training step `step`, epoch after epoch of
    length-bucketed, shuffled batches, each epoch's order drawn in turn from one seeded generator.
    A function of the step, so a run resumed at any step sees the batches it would have seen."""
    rng, epochs = random.Random(seed), []
    steps_per_epoch = math.ceil(len(lengths) / batch_size)

    def rows_at(step: int) -> list[int]:
        while len(epochs) * steps_per_epoch <= step:
            epochs.append(length_sorted_batches(lengths, batch_size, rng))
        return epochs[step // steps_per_epoch][step % steps_per_epoch]
    return rows_at


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """The share of the batches' token positions that are padding."""
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1.0 - sum(lengths) / padded


def collate(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into input_ids (B, T) and attention_mask (B, T), 1 = real token.
    The pad id only fills the tensor: the mask keeps every pad out of attention and pooling."""
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
    return input_ids.to(device), attention_mask.to(device)


# --------------------------------------------------------------------------------------------
# Text -> a memory-mapped token array -> random windows


def corpus_documents(corpus=None, sentences_file=None) -> tuple[list[str], str]:
    """The texts to learn from and a name for them: a plain-text corpus is one document; the
    sentences of a labelled data file (labels dropped) are one document each."""
    if corpus is not None:
        text = read_text(corpus, "corpus")
        if not text.strip():
            raise InputError(f"{corpus}: the corpus is empty")
        return [text], str(corpus)
    return [example.sentence for example in read_examples(sentences_file)], str(sentences_file)


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of everything that decides the token ids (the record a checkpoint carries)."""
    digest = hashlib.sha256()
    for key, value in sorted(tokenizer.to_record().items()):
        digest.update(key.encode())
        digest.update(value.numpy().tobytes() if isinstance(value, torch.Tensor) else repr(value).encode())
    return digest.hexdigest()[:16]


def encode_documents(documents: list[str], tokenizer, cache_dir, name: str) -> tuple[np.ndarray, int]:
    """All documents as one flat array of token ids (BOS before each document, for a model that
    uses one), memory-mapped from `cache_dir`. The file is named by a hash of the texts and of the
    tokenizer, so a changed corpus or tokenizer is encoded anew and an unchanged one never is.
    Returns (ids, number of unknown tokens: characters outside a char vocabulary)."""
    digest = hashlib.sha256(tokenizer_fingerprint(tokenizer).encode())
    for document in documents:
        digest.update(hashlib.sha256(document.encode()).digest())
    dtype = np.uint16 if tokenizer.n_words <= np.iinfo(np.uint16).max + 1 else np.uint32
    path = Path(cache_dir) / f"tokens-{digest.hexdigest()[:16]}.{np.dtype(dtype).name}.bin"
    if not path.is_file():
        ids = []
        for document in tqdm(documents, desc=f"tokenize {Path(name).name}", unit=" docs", leave=False):
            ids += tokenizer.encode(document, bos=True, eos=False)
        with atomic_path(path) as temporary:  # a run stopped mid-write leaves no half-written cache
            np.asarray(ids, dtype=dtype).tofile(temporary)
    ids = np.memmap(path, dtype=dtype, mode="r")
    n_unknown = int((ids == tokenizer.unk_id).sum()) if tokenizer.kind == "char" else 0
    return ids, n_unknown


def split_train_val(ids: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The first 90% of the tokens to train on, the last 10% to validate on (nanoGPT's split:
    contiguous, so no window of the validation text was ever seen in training)."""
    cut = int(len(ids) * (1 - val_fraction))
    return ids[:cut], ids[cut:]


def check_long_enough(ids: np.ndarray, window: int, what: str) -> None:
    if len(ids) < window + 1:
        raise InputError(f"{what} has {len(ids)} tokens, fewer than one window of --max_seq_len {window} "
                         f"plus one target token: use a longer text or a smaller --max_seq_len")


def windows_at(ids: np.ndarray, starts: list[int], window: int, device) -> dict:
    """{"input_ids", "targets"} (B, window) for windows beginning at `starts`."""
    rows = torch.from_numpy(np.stack([ids[s:s + window + 1].astype(np.int64) for s in starts]))
    return {"input_ids": rows[:, :-1].to(device), "targets": rows[:, 1:].to(device)}


def fixed_windows(ids: np.ndarray, window: int, batch_size: int, n_batches: int, device) -> list[dict]:
    """`n_batches` evaluation batches at evenly spaced offsets: the same every evaluation, so
    validation losses are comparable from one evaluation to the next (and across runs)."""
    check_long_enough(ids, window, "the validation text")
    n_windows = batch_size * n_batches
    starts = np.linspace(0, len(ids) - window - 1, n_windows).astype(np.int64).tolist()
    return [windows_at(ids, starts[i:i + batch_size], window, device) for i in range(0, n_windows, batch_size)]


def check_vocabulary(tokenizer, vocab_size: int, checkpoint) -> None:
    """A tokenizer and a model belong together only if their vocabularies have the same size:
    ids the embedding table lacks crash, and a smaller tokenizer means other words for the same ids."""
    if tokenizer.n_words != vocab_size:
        where = tokenizer.model_path or "the checkpoint's own record"
        raise InputError(f"the tokenizer ({where}) has {tokenizer.n_words} tokens but the model {checkpoint} "
                         f"{vocab_size}: they do not belong together (see --tokenizer)")
