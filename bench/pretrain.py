"""Pre-training speed at the README's TinyShakespeare recipe (nanoGPT's CPU shape, Llama blocks).

1. Throughput of the training step at the recipe's shape (dim 128, 4 layers, 4 heads, 64-token
   windows of the character-level corpus, batch 12, AdamW), with the share of each step spent in
   data loading (cutting the random windows), forward, backward and the optimizer.
2. With --full, the README command itself as a user runs it (start-up, evaluations, samples,
   checkpoints and the plot included): its wall time and best validation loss, against the
   targets of at most 90 s and at most 1.70 nats per character on a 2-core machine.

    python bench/pretrain.py            # the step breakdown (a few seconds)
    python bench/pretrain.py --full     # also the whole README command (about 1.5 minutes)
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch

import common
from config import LlamaConfig
from llama import Llama
from minllama.training.data import split_train_val, windows_at
from minllama.training.loop import LoopSettings, build_optimizer
from minllama.training.objectives import LanguageModelLoss
from tokenizer import Tokenizer

README_COMMAND = ["--option", "pretrain", "--corpus", "data/tinyshakespeare.txt", "--tokenizer", "char",
                  "--dim", "128", "--n_layers", "4", "--n_heads", "4", "--max_seq_len", "64", "--batch_size", "12",
                  "--max_steps", "2000", "--lr", "1e-3", "--min_lr", "1e-4", "--warmup_steps", "100",
                  "--eval_every", "250", "--eval_batches", "20", "--dropout", "0.0"]


def step_breakdown(args, device) -> None:
    text = common.find_asset("data/tinyshakespeare.txt").read_text(encoding="utf-8")
    tokenizer = Tokenizer.from_corpus_chars(text)
    ids, _ = split_train_val(torch.tensor(tokenizer.encode(text, bos=True, eos=False), dtype=torch.int32).numpy())
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=tokenizer.n_words, dim=128, n_layers=4, n_heads=4, n_kv_heads=4,
                              max_seq_len=64)).to(device)
    optimizer = build_optimizer(model, LoopSettings(max_steps=1, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99)))
    objective, generator = LanguageModelLoss(), torch.Generator().manual_seed(0)
    phases = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def timed(phase, fn):
        common.synchronize(device)
        start = time.perf_counter()
        result = fn()
        common.synchronize(device)
        phases[phase] += time.perf_counter() - start
        return result

    def step():
        starts = torch.randint(len(ids) - 64, (args.batch_size,), generator=generator).tolist()
        batch = timed("data", lambda: windows_at(ids, starts, 64, device))
        with common.autocast(args, device):
            loss = timed("forward", lambda: objective(model, batch))
        timed("backward", loss.backward)
        timed("optimizer", lambda: (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0), optimizer.step(),
                                    optimizer.zero_grad(set_to_none=True)))

    for _ in range(args.warmup):
        step()
    phases = dict.fromkeys(phases, 0.0)
    wall = time.perf_counter()
    for _ in range(args.steps):
        step()
    wall = time.perf_counter() - wall
    tokens = args.steps * args.batch_size * 64
    rows = [[phase, f"{1000 * seconds / args.steps:.2f}", f"{100 * seconds / wall:.1f}%"] for phase, seconds in phases.items()]
    common.print_table(f"Pre-training step, TinyShakespeare recipe (batch {args.batch_size} x 64 tokens, "
                       f"{sum(p.numel() for p in model.parameters()):,} parameters), {args.steps} steps",
                       ["phase", "ms/step", "share"], rows,
                       [f"throughput: {tokens / wall:,.0f} tokens/s ({1000 * wall / args.steps:.2f} ms/step)",
                        common.machine(device)])


def full_run() -> None:
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(common.REPO_ROOT / "run_llama.py"), *README_COMMAND,
                                 "--out_dir", out_dir], cwd=common.REPO_ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"the README command failed:\n{result.stderr[-2000:]}")
        summary = json.loads((common.Path(out_dir) / "summary.json").read_text())
    print("\nThe README's pre-training command, end to end (start-up, evaluations, samples, checkpoints, plot)")
    print(f"wall time: {wall:.1f} s (target <= 90 s: {'met' if wall <= 90 else 'MISSED'})")
    print(f"best validation loss: {summary['best_val_loss']:.3f} nats/char at step {summary['best_step']} "
          f"(target <= 1.70: {'met' if summary['best_val_loss'] <= 1.70 else 'MISSED'})")
    print(f"training throughput: {summary['tokens_per_second']:,.0f} tokens/s over the run; "
          f"peak memory {summary['peak_memory_mb']:.0f} MB")


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__,
                                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--full", action="store_true", help="also run the README command end to end")
    args = parser.parse_args()
    device = common.setup(args)
    step_breakdown(args, device)
    if args.full:
        full_run()


if __name__ == "__main__":
    main()
