"""What a training run leaves behind to be read: one JSON line per step and per evaluation
(metrics.jsonl), a loss curve (loss.png), and a summary (summary.json)."""

import json
from pathlib import Path

from utils import atomic_path, reported_when_full, write_atomically


class MetricsLog:
    """Appends records to `folder`/metrics.jsonl. A resumed run first drops the records after the
    step it resumes from, so the file reads as one uninterrupted run."""

    def __init__(self, folder, resume_step: int | None = None):
        self.path = Path(folder) / "metrics.jsonl"
        if resume_step is None:
            write_atomically(self.path, "")
        else:
            kept = [r for r in self.records() if r["step"] <= resume_step]
            write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        with reported_when_full(self.path, len(line)), open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]


def plot_losses(records: list[dict], path, title: str) -> None:
    """Training loss (every step, and its running mean) and validation loss against steps."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    if train:
        steps, losses = zip(*train)
        axes.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
        window = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        axes.plot(steps, smooth, color="tab:blue", label=f"train (mean of {window})")
    if val:
        axes.plot(*zip(*val), "o-", color="tab:orange", label="validation")
    axes.set(xlabel="optimizer step", ylabel="loss (nats per token)", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)


def write_summary(path, summary: dict) -> None:
    write_atomically(path, json.dumps(summary, indent=2) + "\n")
