"""llama.cpp's side of bench/llamacpp.py, run by the Python of llama-cpp-python's own virtual
environment (never the project's .venv): it imports nothing of minllama.

    PYTHON bench/llamacpp_worker.py SETTINGS.json   # prints one JSON record on its last line

SETTINGS: {"source": F32 GGUF, "folder": where quantised files go, "kinds": ["F32", "Q8_0", ...],
"threads", "prompt": token ids to process at once, "start": token ids to decode from,
"new_tokens", "repeats", "n_ctx", "n_batch"}. For each kind: the file (made by llama.cpp's own
quantiser from the source, except F32), its load time, prompt processing and greedy decoding
speeds (median of the repeats) and the greedy tokens.
"""

import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np

FILE_TYPES = {"F32": llama_cpp.LLAMA_FTYPE_ALL_F32, "BF16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
              "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}


def quantised(source: Path, kind: str, folder: Path, threads: int) -> Path:
    """The source GGUF in llama.cpp's `kind`, made by its quantiser (llama_model_quantize)."""
    if kind == "F32":
        return source
    target = folder / f"{source.stem}-{kind}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = FILE_TYPES[kind], threads
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not quantise {source} to {kind}")
    return target


def greedy(llm: llama_cpp.Llama, start: list[int], new_tokens: int) -> list[int]:
    """Decode `new_tokens` greedily after `start`, one llama_decode per token."""
    llm.reset()
    llm.eval(start)
    out = []
    for _ in range(new_tokens):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm._ctx.ctx), shape=(llm.n_vocab(),))
        out.append(int(logits.argmax()))
        llm.eval(out[-1:])
    return out


def timed(fn, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def measure(path: Path, settings: dict) -> dict:
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=settings["n_ctx"], n_batch=settings["n_batch"],
                          n_threads=settings["threads"], n_threads_batch=settings["threads"], use_mmap=True,
                          verbose=False)
    load = time.perf_counter() - start

    def process_prompt():
        llm.reset()
        llm.eval(settings["prompt"])

    tokens = greedy(llm, settings["start"], settings["new_tokens"])  # also the warm-up
    process_prompt()
    return {"file": str(path), "bytes": path.stat().st_size, "load_s": load,
            "prompt_s": timed(process_prompt, settings["repeats"]),
            "decode_s": timed(lambda: greedy(llm, settings["start"], settings["new_tokens"]), settings["repeats"]),
            "tokens": tokens}


def main() -> None:
    settings = json.loads(Path(sys.argv[1]).read_text())
    source, folder = Path(settings["source"]), Path(settings["folder"])
    results = {kind: measure(quantised(source, kind, folder, settings["threads"]), settings)
               for kind in settings["kinds"]}
    print(json.dumps({"version": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode(),
                      "results": results}))


if __name__ == "__main__":
    main()
