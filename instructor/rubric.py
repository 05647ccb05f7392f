"""What a submission's outputs score, for grade.py: the prediction files against the gold labels,
the generations, the upstream rubric's letter and the points of every graded item.

The letter is upstream's:
    B+  the sanity check and the optimizer check pass
    A   ... and every accuracy is within 0.05 (SST) / 0.15 (CFIMDB) of the reference table (or
        above it), no generation is flagged and the RoPE check passes too
    A-  ... the checks pass and the outputs are there, but an accuracy, a generation or RoPE is off
The points (Gradescope, GitHub Classroom) come from the course table (support/course.py POINTS):
each grader check and each output file earns all of its points or none, and the letter is shown
beside them. Every reason is a sentence that names the check or file it is about.
"""

from dataclasses import dataclass
from pathlib import Path

from perplexity import PerplexityModel

from support.course import COURSES, GENERATION_FILES, GRADER_CHECKS

# The course variants' upstream reference accuracies (DESIGN.md, mean of 10 seeds) and the
# rubric's tolerances below them.
REFERENCE_ACCURACY = {name: c.reference_accuracy() for name, c in COURSES.items()}
TOLERANCE = {"sst": 0.05, "cfimdb": 0.15}
MAX_TEXT_BYTES = 20 * 2**20  # a prediction or generation file larger than this is not read

# What happened to a check that did not pass, as the verb of a sentence.
OUTCOMES = {"failed": "failed", "not implemented": "is not implemented", "error": "stopped with an error",
            "timeout": "ran out of time", "memory": "ran out of memory", "output limit": "printed too much",
            "skipped": "was skipped"}


# ----------------------------------------------------------------------------- predictions

def read_labelled(path: Path) -> list[tuple[str, str]]:
    """(label, sentence) of every `LABEL ||| SENTENCE` line."""
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_TEXT_BYTES} bytes")
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        if "|||" not in line:
            raise ValueError(f"{path.name} line {number}: expected 'LABEL ||| SENTENCE'")
        label, sentence = line.split("|||", 1)
        rows.append((label.strip(), sentence.strip()))
    return rows


def score_predictions(predictions: Path, gold: Path) -> dict:
    """Accuracy of a prediction file against the gold file; None for placeholder labels."""
    gold_rows, predicted = read_labelled(gold), read_labelled(predictions)
    if len(predicted) != len(gold_rows):
        raise ValueError(f"{predictions.name} has {len(predicted)} lines, the input has {len(gold_rows)}")
    mismatched = sum(p[1] != g[1] for p, g in zip(predicted, gold_rows))
    if mismatched > 0.05 * len(gold_rows):
        raise ValueError(f"{predictions.name}: {mismatched} of {len(gold_rows)} sentences differ from the input "
                         "(wrong order or the prompt written instead of the sentence?)")
    if len({label for label, _ in gold_rows}) == 1:
        return {"accuracy": None, "note": "placeholder gold labels: no accuracy", "lines": len(gold_rows)}
    correct = sum(p[0] == g[0] for p, g in zip(predicted, gold_rows))
    return {"accuracy": correct / len(gold_rows), "lines": len(gold_rows)}


def score_all(code: Path, data_dir: Path, variant: str) -> dict:
    """Every prediction file of the course, scored or with the reason it cannot be."""
    scores = {}
    for name in sorted(COURSES[variant].output_files() - set(GENERATION_FILES)):
        path, gold = code / name, data_dir / ("-".join(name.split("-")[:2]) + ".txt")  # sst-dev.txt
        if not path.is_file() or path.is_symlink():
            scores[name] = {"error": "missing"}
            continue
        try:
            scores[name] = score_predictions(path, gold)
        except (ValueError, OSError) as err:
            scores[name] = {"error": str(err)}
    return scores


def generation_scores(code: Path, scorer: PerplexityModel | None) -> dict:
    scores = {}
    for name in GENERATION_FILES:
        path = code / name
        if not path.is_file() or path.is_symlink():
            scores[name] = {"error": "missing"}
            continue
        text = path.read_bytes()[:MAX_TEXT_BYTES].decode(errors="replace").strip()
        entry = {"characters": len(text), "excerpt": text[:300]}
        if not text:
            entry["flag"] = "empty"
        elif scorer is not None:
            entry["perplexity"] = scorer.perplexity(text)
        scores[name] = entry
    return scores


# ----------------------------------------------------------------------------- the letter

def check_sentence(check: str, entry: dict) -> str | None:
    """Why a grader check did not pass, as a sentence; None when it passed."""
    status = entry.get("status", "skipped")
    if status == "passed":
        return None
    detail = entry.get("detail", "").rstrip(".")
    return f"The {GRADER_CHECKS[check]} {OUTCOMES.get(status, status)}" + (f": {detail}." if detail else ".")


def prediction_problem(name: str, score: dict, variant: str) -> str | None:
    """Why a prediction file falls short of the rubric, as a sentence; None when it does not."""
    if "error" in score:
        return f"{name} is missing." if score["error"] == "missing" else f"{name} cannot be scored: {score['error']}."
    dataset, split, run = name.split("-")[:3]
    reference = REFERENCE_ACCURACY[variant].get((dataset, run), {}).get(split)
    accuracy = score.get("accuracy")
    if reference is not None and accuracy is not None and accuracy < reference - TOLERANCE[dataset]:
        return (f"{name} has accuracy {accuracy:.3f}, below the reference {reference:.3f} by more than "
                f"{TOLERANCE[dataset]}.")
    return None


def generation_problem(name: str, entry: dict) -> str | None:
    if "error" in entry:
        return f"{name} is missing." if entry["error"] == "missing" else f"{name}: {entry['error']}."
    if entry.get("flag"):
        return f"{name} is flagged ({entry['flag']}): a person should read it; A if it is coherent."
    return None


def apply_rubric(report: dict, variant: str) -> tuple[str, list[str]]:
    """The upstream letter and the reasons it is not an A, each a sentence."""
    checks = report.get("checks", {})
    check_reasons = [sentence for check in GRADER_CHECKS if (sentence := check_sentence(check, checks.get(check, {})))]
    if any(checks.get(check, {}).get("status") != "passed" for check in ("sanity", "optimizer")):
        return "B or below", check_reasons
    missing = [problem for name, score in report["predictions"].items() if "error" in score
               and (problem := prediction_problem(name, score, variant))]
    missing += [problem for name, entry in report.get("generations", {}).items() if "error" in entry
                and (problem := generation_problem(name, entry))]
    if missing:
        return "B+", check_reasons + missing
    reasons = check_reasons + [problem for name, score in report["predictions"].items()
                               if (problem := prediction_problem(name, score, variant))]
    reasons += [problem for name, entry in report.get("generations", {}).items()
                if (problem := generation_problem(name, entry))]
    return ("A-" if reasons else "A"), reasons


# ----------------------------------------------------------------------------- the points

@dataclass
class Item:
    """One graded item: a grader check or an output file, with its points."""
    name: str
    score: float
    max_score: float
    output: str  # what a student reads: why it passed or not

    @property
    def passed(self) -> bool:
        return self.score == self.max_score


def scored_items(report: dict, variant: str) -> list[Item]:
    """Every check and output file of the course with the points it earned (all or none)."""
    items = []
    for name, most in COURSES[variant].points().items():
        if name in GRADER_CHECKS:
            entry = report.get("checks", {}).get(name, {})
            problem = check_sentence(name, entry)
            done = "The check passed" + (f", compared with {'; '.join(entry['compared with'])}"
                                         if entry.get("compared with") else "") + "."
        elif name in GENERATION_FILES:
            entry = report.get("generations", {}).get(name, {"error": "missing"})
            problem = generation_problem(name, entry)
            done = f"{name}: {entry.get('characters', 0)} characters" + (
                f", perplexity {entry['perplexity']:.2f} under the reference model." if entry.get("perplexity")
                else ".")
        else:
            entry = report.get("predictions", {}).get(name, {"error": "missing"})
            problem = prediction_problem(name, entry, variant)
            done = (f"{name}: accuracy {entry['accuracy']:.3f}." if entry.get("accuracy") is not None
                    else f"{name}: {entry.get('note', 'well-formed')}.")
        items.append(Item(name, 0 if problem else most, most, problem or done))
    return items


def total(items: list[Item]) -> tuple[float, float]:
    return sum(item.score for item in items), sum(item.max_score for item in items)
