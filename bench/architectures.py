"""The ablation ladder (issue 11): the README's TinyShakespeare pre-training, one change at a time.

    python bench/architectures.py                        # every variant (about 4 minutes each on one core)
    python bench/architectures.py --variants alibi,gelu  # a part: results are appended to one JSON file
    python bench/architectures.py --report-only          # table and plot from the JSON alone

Each variant is the README command (bench/pretrain.py's README_COMMAND) plus one flag of
architectures.py, run as its own process with the same seed. Printed and written: a Markdown
table of the best validation loss (nats per character), the parameters, the wall time and the
tokens per second of every variant, and a plot of the validation curves.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from pretrain import README_COMMAND
from utils import write_atomically

VARIANTS = {
    "llama2": ([], "RoPE, SwiGLU, softmax attention: the README model"),
    "alibi": (["--positional", "alibi"], "ALiBi distance penalties instead of RoPE"),
    "nope": (["--positional", "none"], "no positional signal but the causal mask"),
    "gelu": (["--ffn", "gelu"], "a two-matrix GELU feed-forward of the same size"),
    "differential": (["--attention", "differential"], "differential attention (2 heads of 2 halves)"),
}
HEADER = ["variant", "flags", "best val loss", "at step", "parameters", "wall s", "tokens/s"]


def run_variant(name: str, threads: int | None) -> dict:
    flags, _ = VARIANTS[name]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with tempfile.TemporaryDirectory() as out_dir:
        command = ["run_llama.py", *README_COMMAND, *flags, "--out_dir", out_dir]
        started = time.perf_counter()
        result = subprocess.run([sys.executable, *command], cwd=common.REPO_ROOT, env=env, capture_output=True,
                                text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
        summary = json.loads((Path(out_dir) / "summary.json").read_text())
        records = map(json.loads, (Path(out_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
        curve = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    return {"variant": name, "flags": " ".join(flags), "best_val_loss": summary["best_val_loss"],
            "best_step": summary["best_step"], "parameters": summary["parameters"], "seconds": wall,
            "tokens_per_second": summary["tokens_per_second"], "val_curve": curve,
            "command": "python " + " ".join(command[:-2]), "threads": threads,
            "machine": common.machine(common.torch.device("cpu"))}


def table(results: list[dict]) -> str:
    rows = [[r["variant"], f"`{r['flags']}`" if r["flags"] else "(none)", f"{r['best_val_loss']:.3f}",
             str(r["best_step"]), f"{r['parameters']:,}", f"{r['seconds']:.0f}",
             f"{r['tokens_per_second']:,.0f}"] for r in sorted(results, key=lambda r: list(VARIANTS).index(r["variant"]))]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(HEADER) - 2)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        steps, losses = zip(*r["val_curve"])
        ax.plot(steps, losses, marker="o", markersize=3, label=r["variant"])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("TinyShakespeare, one change at a time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run (default: torch's)")
    parser.add_argument("--results", type=Path, default=common.REPO_ROOT / "bench" / "results" / "architectures.json")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table and the plot")
    args = parser.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    results = json.loads(args.results.read_text()) if args.results.is_file() else []
    if not args.report_only:
        for name in args.variants.split(","):
            record = run_variant(name, args.threads)
            results = [r for r in results if r["variant"] != name] + [record]
            args.results.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(args.results, json.dumps(results, indent=1) + "\n")
            print(f"{name}: best val loss {record['best_val_loss']:.3f} at step {record['best_step']}, "
                  f"{record['seconds']:.0f} s", flush=True)
    print(table(results))
    png = args.results.with_suffix(".png")
    plot(results, png)
    print(f"wrote {args.results} and {png}")


if __name__ == "__main__":
    main()
