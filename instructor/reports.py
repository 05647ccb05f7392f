"""grade.py's output: one JSON and one Markdown report per submission, and grades.csv for the batch.

Every file is written to a temporary name in its folder first, then renamed, so an interrupted
run never leaves a half-written report.
"""

import csv
import io
import json
import os
from pathlib import Path

from support.course import GRADER_CHECKS as CHECKS


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_reports(reports: list[dict], out: Path) -> None:
    (out / "reports").mkdir(parents=True, exist_ok=True)
    for report in reports:
        stem = out / "reports" / report["name"]
        write_atomically(stem.with_suffix(".json"), json.dumps(report, indent=2))
        write_atomically(stem.with_suffix(".md"), markdown_report(report))
    columns = ["name", "andrew_id", "status", "grade", "score", "max score", *CHECKS]
    accuracy_columns = sorted({name for r in reports for name in r.get("predictions", {})})
    generation_files = sorted({name for r in reports for name in r.get("generations", {})})
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(columns + accuracy_columns + [f"perplexity {name}" for name in generation_files]
                    + ["needs review", "reasons"])
    for r in reports:
        checks = r.get("checks", {})
        preds = r.get("predictions", {})
        gens = r.get("generations", {})
        writer.writerow(
            [r["name"], r.get("andrew_id") or "", r["status"], r.get("grade", ""), r.get("score", ""),
             r.get("max_score", ""),
             *(checks.get(c, {}).get("status", "") for c in CHECKS),
             *(_cell(preds.get(name, {})) for name in accuracy_columns),
             *(_cell(gens.get(name, {}), "perplexity") for name in generation_files),
             "yes" if any(e.get("flag") for e in gens.values()) else "",
             " | ".join(r.get("reasons", []))])
    write_atomically(out / "grades.csv", table.getvalue())


def _cell(entry: dict, key: str = "accuracy") -> str:
    if "error" in entry:
        return entry["error"][:60]
    value = entry.get(key)
    return "" if value is None else f"{value:.3f}" if key == "accuracy" else f"{value:.2f}"


def markdown_report(report: dict) -> str:
    lines = [f"# Grading report: {report['name']}", "",
             f"- submission: `{report['submission']}`", f"- Andrew ID (top-level folder): {report.get('andrew_id')}",
             f"- course variant: {report['variant']}", f"- status: **{report['status']}**",
             f"- grade: **{report.get('grade', '')}**" + (
                 f" (score {report['score']:g} of {report['max_score']:g} points)" if "score" in report else "")]
    if "seed" in report:
        lines.append(f"- grader checks on inputs drawn with seed {report['seed']} (as well as the upstream inputs)")
    lines.append("")
    if report.get("reasons"):
        lines += ["## Why", ""] + [f"- {reason}" for reason in report["reasons"]] + [""]
    if report.get("checks"):
        lines += ["## Grader checks", "", "| check | status | detail | compared with | sandbox | seconds |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | {c['status']} | {c['detail'].replace('|', '/')} | "
                  f"{'; '.join(c.get('compared with', []))} | {c.get('sandbox', 'not run').split(':')[0]} | "
                  f"{c.get('seconds', '')} |" for name, c in report["checks"].items()] + [""]
        for sandbox in sorted({c["sandbox"] for c in report["checks"].values() if "sandbox" in c}):
            lines += [f"Sandbox {sandbox}.", ""]
        if report["checks"].get("sanity", {}).get("checkpoint"):
            lines += [f"The sanity check ran on `{report['checks']['sanity']['checkpoint']}`.", ""]
    if report.get("points"):
        lines += ["## Points", "", "| item | points | of | why |", "| --- | --- | --- | --- |"]
        lines += [f"| {name} | {item['score']:g} | {item['max_score']:g} | {item['output'].replace('|', '/')} |"
                  for name, item in report["points"].items()] + [""]
    if report.get("support_modules_from_solution"):
        lines += [f"Modules missing from the submission, taken from the solution: "
                  f"{', '.join(report['support_modules_from_solution'])}", ""]
    if report.get("predictions"):
        lines += ["## Predictions", "", "| file | accuracy | note |", "| --- | --- | --- |"]
        for name, score in report["predictions"].items():
            accuracy = score.get("accuracy")
            lines.append(f"| {name} | {'' if accuracy is None else f'{accuracy:.3f}'} | "
                         f"{score.get('error', score.get('note', ''))} |")
        lines.append("")
    if report.get("generations"):
        lines += ["## Generations (for a person to read)", ""]
        for name, entry in report["generations"].items():
            ppl = entry.get("perplexity")
            lines += [f"### {name}", "", f"- perplexity under the reference model: "
                      f"{'n/a' if ppl is None else f'{ppl:.2f}'}", f"- flag: {entry.get('flag', entry.get('error', 'none'))}",
                      "", "```", entry.get("excerpt", ""), "```", ""]
    return "\n".join(lines)

