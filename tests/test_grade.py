"""The autograder (instructor/grade.py) on synthetic submissions: a perfect one, random predictions,
a failing optimizer, one that hangs, one that allocates without bound, and hostile zips.

One batch is graded once (module fixture) with short limits; each test reads its report.
The sanity check runs on a tiny random checkpoint whose reference make_reference.py writes."""

import json
import os
import random
import shutil
import stat
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from config import LlamaConfig
from llama import Llama
from utils import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "instructor"))
import grade  # noqa: E402
import make_reference  # noqa: E402
from make_skeleton import find_assets, source_files  # noqa: E402

ANDREW_ID = "student1"


def require(path: Path | None, what: str) -> Path:
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{what} not found")
        pytest.skip(f"{what} not found (run setup.sh or set MINLLAMA_ASSETS)")
    return path


def solution_code() -> dict[str, str]:
    """The solution's top-level Python files: a submission that implements everything."""
    return {path: (REPO_ROOT / path).read_text() for path in source_files() if "/" not in path and path.endswith(".py")}


def write_submission(folder: Path, data_dir: Path, predict, code_overrides=None) -> Path:
    """A submission folder ANDREW_ID/ with code, predictions (predict(gold_label, n_labels)) and generations."""
    root = folder / ANDREW_ID
    root.mkdir(parents=True)
    for name, text in {**solution_code(), **(code_overrides or {})}.items():
        (root / name).write_text(text)
    for dataset, n_labels in (("sst", 5), ("cfimdb", 2)):
        for split in ("dev", "test"):
            gold = grade.read_labelled(data_dir / f"{dataset}-{split}.txt")
            for run in ("prompting", "finetuning", "lora"):
                lines = [f"{predict(label, n_labels)} ||| {sentence}" for label, sentence in gold]
                (root / f"{dataset}-{split}-{run}-output.txt").write_text("\n".join(lines) + "\n")
    for name in grade.GENERATION_FILES:
        (root / name).write_text("Once upon a time, there was a little girl named Lily. She loved to play.")
    return root


def zip_folder(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder).as_posix())
    return zip_path


def hostile_zips(folder: Path, outside: Path) -> dict[str, Path]:
    zips = {}
    zips["dotdot"] = folder / "dotdot.zip"
    with zipfile.ZipFile(zips["dotdot"], "w") as archive:
        archive.writestr(f"{ANDREW_ID}/llama.py", "x = 1\n")
        archive.writestr(f"{ANDREW_ID}/../../../escaped.txt", "escaped\n")
    zips["absolute"] = folder / "absolute.zip"
    with zipfile.ZipFile(zips["absolute"], "w") as archive:
        archive.writestr(str(outside / "absolute.txt"), "escaped\n")
    zips["symlink"] = folder / "symlink.zip"
    with zipfile.ZipFile(zips["symlink"], "w") as archive:
        link = zipfile.ZipInfo(f"{ANDREW_ID}/llama.py")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, str(outside / "target.py"))
    zips["bomb"] = folder / "bomb.zip"  # 64 MB of zeros in a few KB: over the unpacked-bytes limit
    with zipfile.ZipFile(zips["bomb"], "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{ANDREW_ID}/zeros.txt", b"\0" * (64 * 2**20))
    zips["lying"] = folder / "lying.zip"  # the same, but the headers claim 1 KB
    data = bytearray(zips["bomb"].read_bytes())
    size = (64 * 2**20).to_bytes(4, "little")
    data = data.replace(size, (1024).to_bytes(4, "little"))
    zips["lying"].write_bytes(bytes(data))
    zips["not a zip"] = folder / "garbage.zip"
    zips["not a zip"].write_bytes(os.urandom(2000))
    return zips


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Grade every synthetic submission in one batch; returns {name: report}, the out dir, the outside dir."""
    assets = require(find_assets(), "grader reference files")
    data_dir = require(grade.find_data_dir(), "gold data")
    tokenizer = require(next((p for p in (REPO_ROOT / "tokenizer.model", assets.parent / "tokenizer.model")
                              if p.is_file()), None), "tokenizer.model")
    tmp = tmp_path_factory.mktemp("grading")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, dim=16, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=64)
    checkpoint = tmp / "tiny.pt"
    torch.save({"model_args": config.to_dict(), "model": Llama(config).state_dict()}, checkpoint)
    references = tmp / "references"
    make_reference.write_references(references, checkpoint, norms=["layernorm"])
    # the upstream RoPE/optimizer files, so a pass means agreement with the course's references
    for name in ("rotary_embedding_actual.data", "optimizer_test.npy", "optimizer_test_clip0.9.npy"):
        shutil.copy2(assets / name, references / name)

    rng = random.Random(0)
    step = grade.REPO_ROOT / "optimizer.py"
    optimizer = step.read_text()
    solution_step = "        # BEGIN SOLUTION\n"
    assert solution_step in optimizer
    broken = {  # the hanging one first: its time limit then runs out while the others are graded
        # It sleeps rather than spins, so that it does not take a core from the others meanwhile.
        "hanging": optimizer.replace(solution_step, solution_step + "        import time\n        time.sleep(3600)\n"),
        "failing-optimizer": optimizer.replace(solution_step, solution_step + "        for g in self.param_groups:\n"
                                               "            for p in g['params']:\n"
                                               "                p.add_(p.grad, alpha=-g['lr'])\n"
                                               "        return None\n"),
        "memory-hog": optimizer.replace(solution_step, solution_step + "        hoard = []\n        while True:\n"
                                        "            hoard.append(bytearray(2**26))\n"),
    }
    submissions = []
    for name, predict, overrides in [*[(name, lambda label, n: label, {"optimizer.py": code})
                                       for name, code in broken.items()],
                                     ("perfect", lambda label, n: label, None),
                                     ("random", lambda label, n: rng.randrange(n), None)]:
        folder = write_submission(tmp / "build" / name, data_dir, predict, overrides).parent
        submissions.append(zip_folder(folder, tmp / f"{name}.zip"))
    outside = tmp / "outside"
    outside.mkdir()
    submissions += list(hostile_zips(tmp, outside).values())

    out = tmp / "out"
    # 20 s per check: the passing ones take 2-6 s on two busy cores, and the hanging one's 20 s
    # pass while the others are graded.
    code = grade.main([*map(str, submissions), "--out", str(out), "--checkpoint", str(checkpoint),
                       "--reference-dir", str(references), "--data-dir", str(data_dir),
                       "--perplexity-model", str(checkpoint), "--tokenizer", str(tokenizer),
                       "--max-perplexity", "1e9", "--timeout", "20", "--memory-mb", "1500",
                       "--max-bytes", str(16 * 2**20), "--jobs", "3"])
    assert code == 0
    reports = {p.stem: json.loads(p.read_text()) for p in (out / "reports").glob("*.json")}
    return reports, out, outside, tmp


def test_perfect_submission_gets_an_a(batch):
    reports, *_ = batch
    for report in [reports["perfect"]]:
        assert report["andrew_id"] == ANDREW_ID
        assert {c["status"] for c in report["checks"].values()} == {"passed"}, report["checks"]
        assert report["predictions"]["sst-dev-finetuning-output.txt"]["accuracy"] == 1.0
        assert report["predictions"]["cfimdb-test-finetuning-output.txt"]["accuracy"] is None  # placeholders
        assert report["generations"]["generated-sentence-temp-0.txt"]["perplexity"] > 1
        assert report["grade"] == "A", report["reasons"]


def test_random_predictions_get_an_a_minus(batch):
    report = batch[0]["random"]
    assert report["checks"]["optimizer"]["status"] == "passed"
    assert report["grade"] == "A-"
    assert any("below the reference" in reason for reason in report["reasons"])


def test_failing_optimizer_is_below_b_plus(batch):
    report = batch[0]["failing-optimizer"]
    assert report["checks"]["optimizer"]["status"] == "failed"
    assert report["checks"]["sanity"]["status"] == "passed"
    assert report["grade"] == "B or below"


def test_hanging_submission_is_stopped_and_reported(batch):
    report = batch[0]["hanging"]
    assert report["checks"]["optimizer"]["status"] == "timeout"
    assert report["checks"]["rope"]["status"] == "passed"
    assert report["grade"] == "B or below"


def test_unbounded_allocation_hits_the_memory_limit(batch):
    report = batch[0]["memory-hog"]
    assert report["checks"]["optimizer"]["status"] == "memory", report["checks"]["optimizer"]
    assert report["grade"] == "B or below"


@pytest.mark.parametrize("name, reason", [("dotdot", "'..'"), ("absolute", "absolute path"),
                                          ("symlink", "symbolic link"), ("bomb", "unpacks to"),
                                          ("lying", "zeros.txt"), ("garbage", "not a zip")])
def test_hostile_zips_are_rejected(batch, name, reason):
    report = batch[0][name]
    assert report["status"] == "rejected" and report["grade"] == "not graded"
    assert reason in report["reasons"][0]


def test_nothing_is_written_outside_the_work_folder(batch):
    _, out, outside, tmp = batch
    assert list(outside.iterdir()) == []
    assert not (tmp / "escaped.txt").exists() and not (out / "escaped.txt").exists()
    assert not any(p.name == "escaped.txt" for p in tmp.rglob("*"))


def test_batch_csv_and_markdown(batch):
    reports, out, *_ = batch
    rows = (out / "grades.csv").read_text().splitlines()
    assert len(rows) == 1 + len(reports)
    assert "# Grading report: perfect" in (out / "reports" / "perfect.md").read_text()


def test_folder_submissions_are_copied_without_following_symlinks(tmp_path):
    folder = tmp_path / "submission" / ANDREW_ID
    folder.mkdir(parents=True)
    (folder / "llama.py").write_text("x = 1\n")
    grade.safe_copy_folder(folder.parent, tmp_path / "copy", grade.Limits())
    assert (tmp_path / "copy" / ANDREW_ID / "llama.py").read_text() == "x = 1\n"
    (folder / "secret.py").symlink_to(tmp_path / "elsewhere.py")
    with pytest.raises(grade.Rejected, match="symbolic link"):
        grade.safe_copy_folder(folder.parent, tmp_path / "copy2", grade.Limits())


def test_flagging_outlier_generations():
    reports = [{"generations": {name: {"perplexity": p} for name in grade.GENERATION_FILES}}
               for p in (10, 11, 12, 13, 90, 5000)]
    grade.flag_generations(reports, max_perplexity=1000)
    flags = [r["generations"]["generated-sentence-temp-0.txt"].get("flag") for r in reports]
    assert flags[:4] == [None] * 4 and "median" in flags[4] and "> 1000" in flags[5]
