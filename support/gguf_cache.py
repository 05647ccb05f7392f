"""A decoded copy of a GGUF file, kept on disk so that loading the file again takes a fraction
of a second instead of seconds.

Reading a GGUF file is slow in two places: `gguf.GGUFReader` parses every metadata value in
Python (SmolLM2's vocabulary alone is 49k strings and 49k merges), and the quantised tensors
must be dequantised with numpy. Neither result changes while the file does not, so the first
read stores both in one `torch.save` file: the tensors as float32, the metadata as JSON text
in a byte tensor (unpickling 100k strings one by one takes seconds, json.loads milliseconds).
Later reads memory-map it (`torch.load(mmap=True)`), which costs page faults instead of a parse.

The cache lives outside the repository, in `$MINLLAMA_CACHE` (default `~/.cache/minllama`), under
a name made from a hash of the file's content (about 0.3 s for SmolLM2's 98 MB): the same model
in two checkouts or environments is one entry, and a changed file gets a new one. The folder is
kept under MAX_CACHE_BYTES (`$MINLLAMA_GGUF_CACHE_MB`, default 2048): after each new entry the
least recently used ones are removed. Delete the folder to reclaim the space (SmolLM2-135M takes
0.5 GB); `MINLLAMA_CACHE=off` turns caching off.

`cached_reader(path)` returns an object with the two attributes of a GGUFReader that this
repository reads, `fields` (key -> field with `.contents()`) and `tensors` (with `.name`,
`.tensor_type`, `.shape` in ggml's order and `.data`), with the difference that every tensor
is already float32, its `.data` in PyTorch's (out, in) order.
"""

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils import cache_dir, save_atomically

FORMAT_VERSION = 3  # bump when the stored layout changes: old entries are then ignored (and evicted first)
DEFAULT_MAX_MB = 2048  # four SmolLM2-sized entries


@dataclass(frozen=True)
class _Field:
    value: object

    def contents(self):
        return self.value


@dataclass(frozen=True)
class _Tensor:
    name: str
    tensor_type: int  # always float32 here: the values were dequantised when cached
    shape: np.ndarray  # ggml's order (fastest-varying first), as GGUFReader gives it
    data: np.ndarray  # float32 in PyTorch's order (GGUFReader's: the file's bytes)


@dataclass(frozen=True)
class DecodedGGUF:
    fields: dict
    tensors: list


def cache_file(path: Path) -> Path | None:
    """The entry of the GGUF file `path`: named by its content's hash, wherever the file lies."""
    folder = cache_dir()
    if folder is None:
        return None
    with open(path, "rb") as file:
        key = hashlib.file_digest(file, "sha256").hexdigest()[:32]
    return folder / "gguf" / f"{key}-v{FORMAT_VERSION}.pt"


def max_cache_bytes() -> int:
    return int(float(os.environ.get("MINLLAMA_GGUF_CACHE_MB", DEFAULT_MAX_MB)) * 2**20)


def evict(folder: Path, keep: Path, limit: int) -> None:
    """Remove the least recently used entries (by modification time, which a read renews) until the
    folder holds at most `limit` bytes; `keep`, the entry just written, stays."""
    entries = sorted((entry for entry in folder.glob("*.pt") if entry != keep), key=lambda e: e.stat().st_mtime)
    total = sum(entry.stat().st_size for entry in entries) + (keep.stat().st_size if keep.is_file() else 0)
    for entry in entries:
        if total <= limit:
            break
        total -= entry.stat().st_size
        entry.unlink(missing_ok=True)


def cached_reader(path) -> DecodedGGUF:
    """The metadata and float32 tensors of the GGUF file `path`, from the cache when it has them."""
    path = Path(path)
    stored = cache_file(path)
    if stored is not None and stored.is_file():
        try:
            decoded = _from_record(torch.load(stored, mmap=True, weights_only=True))
            os.utime(stored)  # recently used: evicted last
            return decoded
        except Exception:  # a damaged entry (full disk, killed writer): decode the file again
            pass
    record = _decode(path)
    if stored is not None:
        _write_atomically(record, stored)
        evict(stored.parent, stored, max_cache_bytes())
    return _from_record(record)


def _decode(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {key: field.contents() for key, field in reader.fields.items()
              if not key.startswith("GGUF.")}  # the header's own counts, not metadata
    def dequantize(tensor):
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)  # a copy, or a view for float32
        shape = tuple(reversed(tensor.shape.tolist()))  # ggml's ne order -> PyTorch's
        return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))

    # Dequantising is numpy work that releases the GIL: threads give a near-linear speed-up.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        tensors = dict(zip((t.name for t in reader.tensors), pool.map(dequantize, reader.tensors)))
    text = json.dumps(fields, ensure_ascii=False).encode()
    return {"version": FORMAT_VERSION, "fields": torch.frombuffer(bytearray(text), dtype=torch.uint8),
            "tensors": tensors}


def _write_atomically(record: dict, stored: Path) -> None:
    """Write to a temporary file beside the entry, then rename: a reader never sees half a file.
    A cache that cannot be written (read-only home, full disk) is skipped with a note, not an error."""
    try:
        save_atomically(record, stored)
    except OSError as error:
        print(f"note: the decoded GGUF is not kept in the cache ({error}); MINLLAMA_CACHE=off skips it")


def _from_record(record: dict) -> DecodedGGUF:
    if record.get("version") != FORMAT_VERSION:
        raise ValueError("cache entry of another format version")
    from gguf import GGMLQuantizationType

    tensors = [_Tensor(name, GGMLQuantizationType.F32, np.array(tensor.shape[::-1]), tensor.numpy())
               for name, tensor in record["tensors"].items()]
    fields = json.loads(record["fields"].numpy().tobytes())
    return DecodedGGUF({key: _Field(value) for key, value in fields.items()}, tensors)
