"""minllama beside llama.cpp on SmolLM2-135M-Instruct: one run, the same model, prompt, tokens and threads.

    python bench/llamacpp.py                    # one thread, 128 new tokens, a 256-token prompt
    python bench/llamacpp.py --threads 2 --repeats 5

llama.cpp runs through llama-cpp-python in a virtual environment of its own (never .venv: its
bundled libraries changed transformers' numerics there), found at .venv-llamacpp or $LLAMACPP_PYTHON.
It builds from source (about 9 minutes on 2 cores); name the instruction sets, since a native
build can die with an illegal instruction on a machine other than the one it was built on:

    python3 -m venv .venv-llamacpp
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \\
        .venv-llamacpp/bin/pip install llama-cpp-python==0.3.36
    # on an AVX-512 machine add -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON to CMAKE_ARGS

What is measured, for each pair of the same bits (float32 / F32, int8 / Q8_0, int4 / Q4_0,
bfloat16 / BF16): minllama's SmolLM2 is exported to a float32 GGUF (minllama.tools.export);
llama.cpp reads that file and its own quantiser makes the others from it
(bench/llamacpp_worker.py); minllama loads the same file and quantises at load time (quantize.py).
Then: greedy decoding at batch 1 (tokens/s for a short prompt and NEW tokens, one call per token:
llama_decode there, fast_decode.py's step here), prompt processing (tokens/s for PROMPT tokens at
once, filling the cache), load time, and how many greedy tokens agree. Times are medians of the
repeats, wall clock; llama.cpp runs first, then minllama, each alone on the threads it is given; both load warm files.
"same tokens": the leading greedy tokens two sides share; beside it, each side's against its own
first kind (float32), a measure of what its rounding costs.
The float32 floor is the model's bytes read per token over the bandwidth of one plain read
(torch.sum over 512 MB) on the same threads. Figures go to bench/results/llamacpp.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import common
from llama import load_pretrained
from minllama.inference import fast_decode
from minllama.inference.quantize import prepare_for_inference
from minllama.tools.export import export
from tokenizer import Tokenizer
from utils import write_atomically

PAIRS = {"float32": ("F32", {}), "int8": ("Q8_0", {"quantize": "int8"}), "int4": ("Q4_0", {"quantize": "int4"}),
         "bfloat16": ("BF16", {"dtype": "bfloat16"})}
GOALS = {"decode": {"int8": 0.8, "int4": 0.8}, "prompt": {"float32": 1.0, "int8": 1.0, "int4": 1.0}}
FLOOR_GOAL = 0.6  # float32 decoding at least this share of the read-bandwidth floor
START = "Once upon a time, there was a little robot who"


def llamacpp_python() -> Path | None:
    where = os.environ.get("LLAMACPP_PYTHON") or common.REPO_ROOT / ".venv-llamacpp" / "bin" / "python"
    return Path(where) if Path(where).is_file() else None


def read_bandwidth(threads: int) -> float:
    """Bytes per second of one plain read over 512 MB (more than any cache), on `threads` threads."""
    torch.set_num_threads(threads)
    data = torch.ones(128 * 2 ** 20)  # 512 MB of float32
    data.sum()
    start = time.perf_counter()
    for _ in range(5):
        data.sum()
    return 5 * data.numel() * 4 / (time.perf_counter() - start)


def bytes_per_token(model) -> int:
    """What one decoding step reads: every linear layer's weight (the embedding: one row, left out)."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, nn.Linear))


def run_minllama(source: Path, kind: str, prompt: torch.Tensor, start: torch.Tensor, new_tokens: int,
                 repeats: int) -> dict:
    began = time.perf_counter()
    model = prepare_for_inference(load_pretrained(source), **PAIRS[kind][1])
    step = fast_decode.DecodingStep(model)
    load = time.perf_counter() - began

    def decode():
        return fast_decode.generate(model, start, new_tokens, temperature=0.0, step=step)

    @torch.inference_mode()
    def process_prompt():
        model(prompt, kv_cache=model.new_kv_cache(1, prompt.shape[1]))

    tokens = decode()[0, start.shape[1]:].tolist()  # also the warm-up
    process_prompt()
    seconds = common.compare({"prompt": process_prompt, "decode": decode}, torch.device("cpu"), repeats, warmup=0)
    return {"load_s": load, "prompt_s": seconds["prompt"], "decode_s": seconds["decode"], "tokens": tokens}


def agreement(ours: list[int], theirs: list[int]) -> str:
    """How many leading greedy tokens are the same (after the first difference, the texts part)."""
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return f"{same}/{len(ours)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(PAIRS), help=f"a comma-separated part of {','.join(PAIRS)}")
    parser.add_argument("--results", type=Path, default=common.REPO_ROOT / "bench" / "results" / "llamacpp.json")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    if unknown := set(kinds) - set(PAIRS):
        raise SystemExit(f"--kinds: unknown {', '.join(sorted(unknown))} (choose from {', '.join(PAIRS)})")
    python = llamacpp_python()
    if python is None:
        print("skipped: llama-cpp-python is not built (see `python bench/llamacpp.py -h` for how; "
              "or set LLAMACPP_PYTHON to its venv's python)")
        return
    torch.set_num_threads(args.threads)
    smollm2 = common.smollm2_path()
    tokenizer = Tokenizer(tokenizer_model=smollm2)
    text = common.find_asset("data/sst-dev.txt").read_text()
    prompt_ids = tokenizer.encode(text, bos=True, eos=False)[:args.prompt_tokens]
    start_ids = tokenizer.encode(START, bos=True, eos=False)

    with tempfile.TemporaryDirectory() as folder:
        source = export(smollm2, Path(folder) / "smollm2-f32.gguf", "gguf")
        settings = {"source": str(source), "folder": folder, "kinds": [PAIRS[k][0] for k in kinds],
                    "threads": args.threads, "prompt": prompt_ids, "start": start_ids, "new_tokens": args.new_tokens,
                    "repeats": args.repeats, "n_ctx": 1024, "n_batch": 512}
        (Path(folder) / "settings.json").write_text(json.dumps(settings))
        worker = subprocess.run([str(python), str(Path(__file__).with_name("llamacpp_worker.py")),
                                 str(Path(folder) / "settings.json")], capture_output=True, text=True)
        if worker.returncode != 0:
            raise SystemExit(f"llama.cpp's side failed (exit {worker.returncode}):\n{worker.stderr[-3000:]}")
        theirs = json.loads(worker.stdout.strip().splitlines()[-1])
        prompt, start = torch.tensor([prompt_ids]), torch.tensor([start_ids])
        load_pretrained(source)  # warm, as llama.cpp's memory map is: the GGUF decode cache is filled once
        ours = {kind: run_minllama(source, kind, prompt, start, args.new_tokens, args.repeats) for kind in kinds}
        floor = read_bandwidth(args.threads) / bytes_per_token(load_pretrained(source))

    rows, goals = [], []
    for kind in kinds:
        name, mine = PAIRS[kind][0], ours[kind]
        other = theirs["results"][name]
        rate = {side: {"decode": args.new_tokens / r["decode_s"], "prompt": len(prompt_ids) / r["prompt_s"]}
                for side, r in (("ours", mine), ("theirs", other))}
        ratio = {what: rate["ours"][what] / rate["theirs"][what] for what in ("decode", "prompt")}
        mine.update(decode_tps=rate["ours"]["decode"], prompt_tps=rate["ours"]["prompt"])
        other.update(decode_tps=rate["theirs"]["decode"], prompt_tps=rate["theirs"]["prompt"])
        rows.append([f"{kind} / {name}", f"{rate['ours']['decode']:.1f}", f"{rate['theirs']['decode']:.1f}",
                     f"{ratio['decode']:.2f}x", f"{rate['ours']['prompt']:.0f}", f"{rate['theirs']['prompt']:.0f}",
                     f"{ratio['prompt']:.2f}x", f"{mine['load_s']:.2f}", f"{other['load_s']:.2f}",
                     agreement(mine["tokens"], other["tokens"]),
                     f"{agreement(mine['tokens'], ours[kinds[0]]['tokens'])} / "
                     f"{agreement(other['tokens'], theirs['results'][PAIRS[kinds[0]][0]]['tokens'])}"])
        for what, targets in GOALS.items():
            if kind in targets:
                goals.append(f"{kind} {what} vs llama.cpp {name}: {common.verdict(ratio[what], targets[kind])}")
        if kind == "float32":
            share = rate["ours"]["decode"] / floor
            goals.append(f"float32 decode: {share:.0%} of the read-bandwidth floor ({floor:.1f} tok/s; "
                         f"llama.cpp {rate['theirs']['decode'] / floor:.0%}; target >= {FLOOR_GOAL:.0%}: "
                         f"{'met' if share >= FLOOR_GOAL else 'MISSED'})")
    machine = f"{common.cpu_model()}, {os.cpu_count()} cores, {args.threads} thread(s) each; torch {torch.__version__}"
    common.print_table(
        f"SmolLM2-135M-Instruct, batch 1: decode {args.new_tokens} greedy tokens, process a {len(prompt_ids)}-token "
        f"prompt (median of {args.repeats})",
        ["minllama / llama.cpp", "decode tok/s", "llama.cpp", "ratio", "prompt tok/s", "llama.cpp", "ratio",
         "load s", "llama.cpp", "same tokens", f"same as {kinds[0]}: ours / llama.cpp's"], rows,
        goals + [f"llama.cpp: llama-cpp-python {theirs['version']}, n_ctx 1024, n_batch 512, memory-mapped; "
                 f"{theirs['system_info'].strip()}", f"machine: {machine}; load average {os.getloadavg()[0]:.2f}"])
    record = {"machine": machine, "threads": args.threads, "new_tokens": args.new_tokens,
              "prompt_tokens": len(prompt_ids), "floor_tps": floor, "minllama": ours, "llamacpp": theirs}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.results, json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    sys.exit(main())
