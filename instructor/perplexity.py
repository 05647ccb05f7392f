"""Scoring generated text with a reference language model, for grade.py.

A program cannot judge whether a story is coherent, but a reference model's perplexity,
exp(mean negative log-likelihood per token), singles out text that is far from fluent: such
text is flagged for a person to read, never graded on the number alone.
"""

import math
import statistics
import threading
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


class PerplexityModel:
    """A reference language model that scores text: perplexity = exp(mean negative log-likelihood)."""

    def __init__(self, checkpoint: Path, tokenizer_model: Path):
        self.lock = threading.Lock()  # submissions are graded in threads; one model, one caller at a time
        from llama import load_pretrained
        from tokenizer import Tokenizer
        self.model = load_pretrained(checkpoint)
        self.tokenizer = Tokenizer(tokenizer_model=str(tokenizer_model))
        self.name = checkpoint.name

    def perplexity(self, text: str) -> float | None:
        ids = self.tokenizer.encode(text, bos=True, eos=False)[: self.model.config.max_seq_len + 1]
        if len(ids) < 3:
            return None
        tokens = torch.tensor(ids)[None]
        with self.lock, torch.inference_mode():
            logits, _ = self.model(tokens[:, :-1], targets=tokens[:, 1:])
            loss = torch.nn.functional.cross_entropy(logits[0].float(), tokens[0, 1:])
        return math.exp(loss.item())


def default_perplexity_model() -> tuple[Path, Path] | None:
    """stories42M.pt with tokenizer.model when the instructor has them, else the SmolLM2 GGUF."""
    from utils import smollm2_gguf_path
    stories = REPO_ROOT / "stories42M.pt"
    if stories.is_file() and (REPO_ROOT / "tokenizer.model").is_file():
        return stories, REPO_ROOT / "tokenizer.model"
    gguf = smollm2_gguf_path()
    return (gguf, gguf) if gguf else None


def flag_generations(reports: list[dict], max_perplexity: float, factor: float = 4.0) -> None:
    """Flag for a person: empty text, a perplexity above max_perplexity, or (with 5 or more
    submissions) above `factor` times the batch median of the same file."""
    for name in sorted({name for report in reports for name in report.get("generations", {})}):
        values = [r["generations"][name]["perplexity"] for r in reports
                  if r.get("generations", {}).get(name, {}).get("perplexity") is not None]
        median = statistics.median(values) if len(values) >= 5 else None
        for report in reports:
            entry = report.get("generations", {}).get(name)
            if not entry or entry.get("flag") or entry.get("perplexity") is None:
                continue
            if entry["perplexity"] > max_perplexity:
                entry["flag"] = f"perplexity {entry['perplexity']:.1f} > {max_perplexity:g}"
            elif median is not None and entry["perplexity"] > factor * median:
                entry["flag"] = f"perplexity {entry['perplexity']:.1f} > {factor:g} x batch median {median:.1f}"
