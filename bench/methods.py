"""Every classification method side by side (issue 11): the same data, the same budget, several seeds.

    python bench/methods.py                                   # SST, every method, 3 seeds (about an hour on 2 cores)
    python bench/methods.py --methods lora,ia3 --seeds 1      # a part: results are appended to one JSON file
    python bench/methods.py --dataset cfimdb --train-examples 200 --seeds 1
    python bench/methods.py --report-only                     # table, chart and report from the JSON alone

A run already in the JSON file (same dataset, method, seed and budget) is not run again unless
--rerun is given, so an interrupted or partial table is completed by running the same command again.

Each run is one `run_llama.py` command (printed in the report, so every row can be reproduced) on
a training subset drawn at random for each seed (redrawn per seed) and the first --dev-examples
dev sentences (0: all). Per method the table gives the mean and standard deviation over seeds of
dev accuracy and macro-F1, the trainable parameters, the size of the saved checkpoint, the wall
time and the peak memory (resident set size) of the run. Outputs: the JSON of every run, a
Markdown report with the table and the commands, and a grouped bar chart (methods x metrics).
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import common
from utils import write_atomically  # noqa: E402 (common puts the repository on the path)

# name -> (run_llama.py flags, what the row means). One epoch; learning rates for each method's scale
# of update (a full model moves at 2e-5; vectors and soft prompts need far larger steps).
METHODS = {
    "zero_shot": (["--option", "prompt"], "the frozen model asked the question"),
    "calibrated": (["--option", "prompt", "--calibrate"], "zero-shot, contextual calibration"),
    "few_shot": (["--option", "prompt", "--shots", "5"], "K = 5 demonstrations (one per label) in the prompt"),
    "calibrated_few_shot": (["--option", "prompt", "--shots", "5", "--calibrate"], "K = 5 demonstrations, calibrated"),
    "calibrated_10_shot": (["--option", "prompt", "--shots", "10", "--calibrate"],
                           "K = 10 demonstrations (two per label), calibrated"),
    "finetune": (["--option", "finetune", "--lr", "2e-5"], "the whole model and a linear head"),
    "mixout": (["--option", "finetune", "--lr", "2e-5", "--mixout", "0.1"], "finetune with Mixout p = 0.1"),
    "lora": (["--option", "lora", "--lr", "1e-3", "--lora_rank", "4", "--lora_alpha", "4"], "LoRA r = 4 on attention"),
    "ia3": (["--option", "ia3", "--lr", "3e-3"], "IA3 vectors and the head"),
    "prompt_tuning": (["--option", "prompt_tuning", "--lr", "3e-3", "--n_virtual_tokens", "10", "--head_init",
                       "label_words"], "10 soft-prompt tokens and the head, the head from the label words"),
    "prompt_finetune": (["--option", "prompt_finetune", "--peft", "lora", "--lr", "1e-3", "--lora_alpha", "4"],
                        "the zero-shot scoring trained through LoRA"),
    "wise_ft": (["--option", "lora", "--lr", "1e-3", "--lora_alpha", "4", "--head_init", "label_words",
                 "--wise_ft", "0,0.25,0.5,0.75,1"], "LoRA from the label-word head, best WiSE-FT mix on dev"),
}
DATASETS = {"sst": 1000, "cfimdb": 200}  # the training-set sizes
# Runs each child under a wrapper that reports its own peak resident memory as it exits.
PEAK_WRAPPER = ("import atexit, resource, runpy, sys; "
                "atexit.register(lambda: print(f'peak_rss_kib: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', "
                "file=sys.stderr)); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def default_data_folder() -> Path:
    """data/ in the repository (setup.sh puts it there), else the asset mirror named by $MINLLAMA_ASSETS."""
    here = common.REPO_ROOT / "data"
    mirror = os.environ.get("MINLLAMA_ASSETS")
    return here if here.is_dir() or not mirror else Path(mirror) / "data"


def draw_lines(path: Path, n: int, seed: int | None) -> list[str]:
    """n lines of a data file: drawn at random with `seed`, or the first n with seed None (0: all)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
    if not n or n >= len(lines):
        return lines
    return random.Random(seed).sample(lines, n) if seed is not None else lines[:n]


def run_one(method: str, dataset: str, seed: int, args, folder: Path) -> dict:
    """One run_llama.py command; its summary figures, its command, its time and memory."""
    data = args.data
    train, dev = folder / f"{dataset}-train.txt", folder / f"{dataset}-dev.txt"
    train.write_text("".join(draw_lines(data / f"{dataset}-train.txt", args.train_examples, seed)), encoding="utf-8")
    dev.write_text("".join(draw_lines(data / f"{dataset}-dev.txt", args.dev_examples, None)), encoding="utf-8")
    out = folder / f"{method}-{seed}"
    flags, _ = METHODS[method]
    command = ["run_llama.py", *flags, "--train", train, "--dev", dev, "--label-names",
               data / f"{dataset}-label-mapping.json", "--pretrained-model-path", args.model, "--epochs", args.epochs,
               "--seed", seed, "--batch_size", args.batch_size, "--skip_test", "--out_dir", out,
               *(["--max_sentence_len", args.max_sentence_len] if args.max_sentence_len else [])]
    command = [str(c) for c in command]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *command], cwd=common.REPO_ROOT,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{method} (seed {seed}) failed:\n{result.stderr[-3000:]}")
    peak = int(result.stderr.rsplit("peak_rss_kib: ", 1)[1].split()[0])
    summary = json.loads(next(out.glob("*-output.json")).read_text())
    checkpoint = summary.get("checkpoint_out")
    return {"dataset": dataset, "method": method, "seed": seed, "train_examples": args.train_examples,
            "dev_examples": summary["dev"]["examples"], "epochs": args.epochs, "accuracy": summary["dev"]["accuracy"],
            "macro_f1": summary["dev"]["macro_f1"], "trainable_parameters": summary["trainable_parameters"]
            if checkpoint else 0, "checkpoint_bytes": os.path.getsize(checkpoint) if checkpoint else 0,
            "seconds": seconds, "peak_mib": peak / 1024, "wise_ft": summary.get("wise_ft"),
            "command": "python " + " ".join(c if " " not in c else repr(c) for c in command),
            "machine": common.machine(torch.device("cpu"))}


def load_results(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def run_key(run: dict) -> tuple:
    """What makes two runs the same run: dataset, method, seed and budget."""
    return run["dataset"], run["method"], run["seed"], run["train_examples"], run["dev_examples"], run["epochs"]


def save_results(path: Path, results: list[dict], new: dict) -> list[dict]:
    """Add a run, replacing an earlier one of the same key."""
    results = [r for r in results if run_key(r) != run_key(new)] + [new]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(results, indent=1) + "\n")
    return results


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def budget(run: dict) -> tuple[int, int, int]:
    return run["train_examples"], run["dev_examples"], run["epochs"]


def table_rows(results: list[dict], dataset: str, of_budget: tuple[int, int, int]) -> list[list[str]]:
    """One row per method (in METHODS order) of the runs at one budget: seeds, mean ± std of
    accuracy and macro-F1, the rest as means. (Runs at other budgets never mix into a mean.)"""
    rows = []
    for method in METHODS:
        runs = [r for r in results if r["dataset"] == dataset and r["method"] == method and budget(r) == of_budget]
        if not runs:
            continue
        mean = lambda field: statistics.mean(r[field] for r in runs)  # noqa: E731
        rows.append([method, str(len(runs)), spread([r["accuracy"] for r in runs]),
                     spread([r["macro_f1"] for r in runs]), f"{mean('trainable_parameters'):,.0f}",
                     f"{mean('checkpoint_bytes') / 2**20:.2f}", f"{mean('seconds'):.0f}", f"{mean('peak_mib'):,.0f}"])
    return rows


HEADER = ["method", "seeds", "dev accuracy", "dev macro-F1", "trainable parameters", "checkpoint MiB",
          "wall s", "peak MiB"]


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def chart(results: list[dict], dataset: str, path: Path) -> None:
    """Grouped bars: for every method, its mean dev accuracy and macro-F1, with the std over seeds
    (`results`: the runs of one budget)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if any(r["dataset"] == dataset and r["method"] == m for r in results)]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(methods)), 4))
    width = 0.38
    for offset, (field, label) in zip((-width / 2, width / 2), (("accuracy", "accuracy"), ("macro_f1", "macro-F1"))):
        values = [[r[field] for r in results if r["dataset"] == dataset and r["method"] == m] for m in methods]
        means = [statistics.mean(v) for v in values]
        errors = [statistics.stdev(v) if len(v) > 1 else 0 for v in values]
        ax.bar([i + offset for i in range(len(methods))], means, width, yerr=errors, capsize=3, label=label)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_ylabel(f"{dataset} dev")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"{dataset}: methods side by side (SmolLM2-135M)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: list[dict], args) -> None:
    parts = ["# Classification methods side by side\n",
             "Built by `bench/methods.py` from the runs in "
             f"`{args.results.name}`; every figure is the mean over the seeds (± the standard deviation).\n"]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    for dataset in DATASETS:
        budgets = sorted({budget(r) for r in results if r["dataset"] == dataset}, reverse=True)
        for number, of_budget in enumerate(budgets):  # the largest budget first, and its chart unsuffixed
            runs = [r for r in results if r["dataset"] == dataset and budget(r) == of_budget]
            png = args.report.with_name(f"{args.report.stem}-{dataset}{'-' + str(number) if number else ''}.png")
            chart(runs, dataset, png)
            train, dev, epochs = of_budget
            parts += [f"## {dataset}: {train} training sentences drawn per seed, {dev} dev sentences, "
                      f"{epochs} epoch(s)\n", markdown_table(table_rows(results, dataset, of_budget)) + "\n",
                      f"![{dataset} methods]({png.name})\n", "What each row is:\n"]
            parts += [f"- `{m}`: {METHODS[m][1]}" for m in METHODS if any(r["method"] == m for r in runs)]
            parts += ["\nThe commands (run from the repository root; the data files are the drawn subsets):\n",
                      "```"] + [r["command"] for r in runs] + ["```\n", f"Machine: {runs[-1]['machine']}\n"]
    write_atomically(args.report, "\n".join(parts))
    print(f"wrote {args.report}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="sst")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (the zero-shot rows need only one)")
    parser.add_argument("--train-examples", type=int, default=None, help="default: 1000 (sst), 200 (cfimdb)")
    parser.add_argument("--dev-examples", type=int, default=0, help="the first N dev sentences (0: all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-sentence-len", type=int, default=None, help="cut long reviews (cfimdb) to N tokens")
    parser.add_argument("--data", type=Path, default=default_data_folder(), help="the folder of the data files")
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M")
    parser.add_argument("--results", type=Path, default=common.REPO_ROOT / "bench" / "results" / "methods.json")
    parser.add_argument("--report", type=Path, default=common.REPO_ROOT / "bench" / "results" / "methods.md")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table, chart and report")
    parser.add_argument("--rerun", action="store_true", help="run again what the JSON file already holds")
    args = parser.parse_args()
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}: choose from {', '.join(METHODS)}")
    args.train_examples = args.train_examples or DATASETS[args.dataset]
    args.model = args.model or str(common.smollm2_path())
    results = load_results(args.results)
    dev_size = args.dev_examples or len(draw_lines(args.data / f"{args.dataset}-dev.txt", 0, None))
    this_budget = {"train_examples": args.train_examples, "dev_examples": dev_size, "epochs": args.epochs}
    if not args.report_only:
        with tempfile.TemporaryDirectory() as folder:
            for method in args.methods.split(","):
                trains = METHODS[method][0][1] != "prompt" or "--shots" in METHODS[method][0]
                for seed in range(args.seeds if trains else 1):
                    planned = run_key({"dataset": args.dataset, "method": method, "seed": seed, **this_budget})
                    if not args.rerun and planned in {run_key(r) for r in results}:
                        print(f"{method} seed {seed}: in {args.results.name} already (--rerun runs it again)")
                        continue
                    record = run_one(method, args.dataset, seed, args, Path(folder))
                    results = save_results(args.results, results, record)
                    print(f"{method} seed {seed}: dev acc {record['accuracy']:.3f}, macro-F1 {record['macro_f1']:.3f}, "
                          f"{record['seconds']:.0f}s, peak {record['peak_mib']:,.0f} MiB", flush=True)
    common.print_table(f"{args.dataset} dev, methods side by side", HEADER,
                       table_rows(results, args.dataset, budget(this_budget)), [])
    write_report(results, args)


if __name__ == "__main__":
    main()
