"""Peak memory of one LoRA fine-tuning step against one full fine-tuning step, same batch.

    python bench/lora_memory.py                  # CPU: peak resident memory of fresh processes
    python bench/lora_memory.py --device cuda    # GPU: torch.cuda.max_memory_allocated

Each mode runs in a fresh subprocess: build the classifier (stories42M shape, random weights),
make its parameters trainable as run_llama.py does for --option finetune or lora, warm up,
then run two training steps (forward + backward + optimizer.AdamW; the first creates the
gradients and the optimizer state) on a batch of 80 x 32 tokens. On the CPU the step's memory is the rise of the process's peak
resident set (VmHWM, reset just before the steps) over its resident set before them.
"""

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import common
from minllama.classify.method_builders import DEFAULT_LORA_TARGETS, TRAININGS
from optimizer import AdamW

MODES = ("finetune", "lora")


def memory_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (the peak) of this process, in KiB."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def reset_cpu_peak():
    """Return freed heap to the system, then restart the peak count (Linux: clear_refs 5)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def measure(mode: str, args) -> dict:
    device = common.setup(args)
    model = common.random_model(common.stories42m_config())
    with tempfile.TemporaryDirectory() as folder:
        classifier = common.our_classifier(model, Path(folder), 5, device).train()
    del model
    TRAININGS[mode].make_trainable(classifier, SimpleNamespace(lora_rank=args.lora_rank, lora_alpha=1.0, mixout=None,
                                                               lora_targets=DEFAULT_LORA_TARGETS, lora_dropout=0.0))
    trainable = [p for p in classifier.parameters() if p.requires_grad]

    def train_steps(batch_size: int, seq_len: int, n_steps: int):
        optimizer = AdamW(trainable, lr=2e-5)
        batch = torch.randint(4, classifier.llama.config.vocab_size, (batch_size, seq_len), device=device)
        labels = torch.randint(0, 5, (batch_size,), device=device)
        for _ in range(n_steps):
            with common.autocast(args, device):
                loss = F.nll_loss(classifier(batch), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        classifier.zero_grad(set_to_none=True)

    # A tiny warm-up first: the first backward pages in hundreds of MB of library code, which
    # the resident set counts but which is no training memory. Its gradients and optimizer
    # state are freed again, so the measured steps include creating their own.
    torch.manual_seed(2)
    train_steps(2, 8, 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_cpu_peak()
        before = memory_kib("VmRSS") * 1024
    train_steps(args.batch_size, args.seq_len, 2)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = memory_kib("VmHWM") * 1024
    return {"before": before, "peak": peak, "trainable": sum(p.numel() for p in trainable)}


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--batch-size", type=int, default=80)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)  # one measurement, in this process
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return

    common.setup(args)
    # glibc raises its mmap threshold as tensors are freed and then keeps their memory for
    # reuse, so the peak resident set would measure its fragmentation, not the training step.
    # A fixed threshold returns every freed tensor to the system at once.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}
    results = {}
    for mode in MODES:
        command = [sys.executable, __file__, "--child", mode, *sys.argv[1:]]
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
    mib = 2 ** 20
    rows = [[mode, f"{r['trainable']:,}", f"{r['before'] / mib:.0f}", f"{r['peak'] / mib:.0f}",
             f"{(r['peak'] - r['before']) / mib:.0f}"] for mode, r in results.items()]
    step = {mode: r["peak"] - r["before"] for mode, r in results.items()}
    footer = [f"LoRA step memory / full fine-tuning step memory: {step['lora'] / step['finetune']:.0%} "
              f"(target <= 60%: {'met' if step['lora'] <= 0.6 * step['finetune'] else 'MISSED'})",
              f"LoRA process peak / full fine-tuning process peak: "
              f"{results['lora']['peak'] / results['finetune']['peak']:.0%}",
              f"glibc MALLOC_MMAP_THRESHOLD_={env['MALLOC_MMAP_THRESHOLD_']} (fixed; see the comment in main)"
              if args.device == "cpu" else "", f"machine: {common.machine(torch.device(args.device))}"]
    common.print_table(f"Training step memory, batch {args.batch_size} x {args.seq_len} tokens, stories42M shape, "
                       f"LoRA rank {args.lora_rank} ({'GPU allocator' if args.device == 'cuda' else 'fresh processes'})",
                       ["mode", "trainable params", "MiB before", "MiB peak", "MiB step"], rows, footer)


if __name__ == "__main__":
    main()
