"""A decoded copy of a GGUF file, kept on disk so that loading the file again takes a fraction
of a second instead of seconds.

Reading a GGUF file is slow in two places: `gguf.GGUFReader` parses every metadata value in
Python (SmolLM2's vocabulary alone is 49k strings and 49k merges), and the quantised tensors
must be dequantised with numpy. Neither result changes while the file does not, so the first
read stores both in one `torch.save` file: the tensors as float32, the metadata as JSON text
in a byte tensor (unpickling 100k strings one by one takes seconds, json.loads milliseconds).
Later reads memory-map it (`torch.load(mmap=True)`), which costs page faults instead of a parse.

The cache lives outside the repository, in `$MINLLAMA_CACHE` (default `~/.cache/minllama`), under
a name made from the file's absolute path, size and modification time: a changed or replaced
file gets a new entry. Delete the folder to reclaim the space (SmolLM2-135M takes 0.5 GB);
`MINLLAMA_CACHE=off` turns caching off.

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

FORMAT_VERSION = 2  # bump when the stored layout changes: old entries are then ignored


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
    folder = cache_dir()
    if folder is None:
        return None
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{FORMAT_VERSION}".encode())
    return folder / "gguf" / f"{path.stem}-{key.hexdigest()[:16]}.pt"


def cached_reader(path) -> DecodedGGUF:
    """The metadata and float32 tensors of the GGUF file `path`, from the cache when it has them."""
    path = Path(path)
    stored = cache_file(path)
    if stored is not None and stored.is_file():
        try:
            return _from_record(torch.load(stored, mmap=True, weights_only=True))
        except Exception:  # a damaged entry (full disk, killed writer): decode the file again
            pass
    record = _decode(path)
    if stored is not None:
        _write_atomically(record, stored)
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
