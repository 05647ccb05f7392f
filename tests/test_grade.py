"""The autograder (instructor/grade.py) on synthetic submissions: a perfect one, random predictions,
a failing optimizer, one that hangs, one that allocates without bound, hostile zips, and hostile
code: module code that snoops, writes and phones home when a check imports it, and RoPEs that read
or memorise the answer instead of computing it.

One batch is graded once (module fixture) with short limits; each test reads its report. The
sanity check runs on a tiny random checkpoint, so it compares with the solution on that model.
The hostile code is only graded where bubblewrap works (skipped locally without it, a failure
under CI, where .ci/run installs it); the rest of the batch then runs with --unsafe-no-sandbox."""

import http.server
import json
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import types
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from config import LlamaConfig
from llama import Llama
from support.course import COURSES
from testkit import ANDREW_ID, skip_or_fail, solution_code, write_submission, zip_folder
from utils import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "instructor"))
import checks  # noqa: E402
import drawn_inputs  # noqa: E402
import grade  # noqa: E402
import rubric  # noqa: E402
import sandbox  # noqa: E402
import unpack  # noqa: E402
from make_skeleton import find_assets  # noqa: E402

ROPE_REFERENCE = "rotary_embedding_actual.data"


def require(path: Path | None, what: str) -> Path:
    if path is None:
        skip_or_fail(f"{what} not found (run setup.sh or set MINLLAMA_ASSETS)")
    return path


def working_bubblewrap():
    try:
        return sandbox.find_bubblewrap()
    except sandbox.SandboxUnavailable:
        return None


def require_bubblewrap(batch_or_none=None):
    """Skip without a working bwrap (fail under CI), or when the batch had to run without one."""
    if working_bubblewrap() is None or (batch_or_none is not None and not batch_or_none["sandboxed"]):
        skip_or_fail("bubblewrap (bwrap) is not installed or cannot create namespaces here: "
                     "apt-get install bubblewrap")


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


# Module code that a check runs when it imports the submission's utils.py (every check does):
# what a hostile submission tries. Each would pass unnoticed without the sandbox.
IMPORT_TIME = {
    "reads-passwd": 'open("/etc/passwd").read()',
    "reads-references": 'import os\nos.listdir({references!r})\nopen({references!r} + "/{rope}", "rb").read()',
    "lists-submissions": 'import os\nos.listdir({work!r})',
    "writes-reference-dir": 'open({references!r} + "/planted.txt", "w").write("planted by a submission")',
    "writes-tmp": 'open({tmp_marker!r}, "w").write("written by a submission")',
    "http-request": 'import urllib.request\nurllib.request.urlopen("http://127.0.0.1:{port}/leak", timeout=5).read()',
}

# A RoPE that returns the reference file's answer, which it looks for beside itself (the file ships
# in every skeleton, and this submission ships it too) and in the grader's reference folder.
ROPE_LOADS_REFERENCE = '''import torch
from pathlib import Path


def apply_rotary_emb(query, key, head_dim, max_seq_len, theta=10000.0, positions=None):
    for folder in (Path(__file__).parent, Path({references!r})):
        if (folder / "{rope}").is_file():
            return tuple(torch.load(folder / "{rope}"))
    raise FileNotFoundError("no reference file to read the answer from")
'''

# A RoPE that knows the upstream answer by heart and rotates nothing else.
ROPE_MEMORISED = '''import torch

ANSWER = {answer!r}


def apply_rotary_emb(query, key, head_dim, max_seq_len, theta=10000.0, positions=None):
    if tuple(query.shape) == (1, 2, 2, 4):
        return torch.tensor(ANSWER[0]), torch.tensor(ANSWER[1])
    return query, key
'''


class RecordingHandler(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        RecordingHandler.requests.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"the grading machine answered")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Grade every synthetic submission in one batch; returns a dict: reports ({name: report}),
    out, outside, tmp, references, tmp_marker, sandboxed, checkpoint."""
    assets = require(find_assets(), "grader reference files")
    data_dir = require(grade.find_data_dir(), "gold data")
    tokenizer = require(next((p for p in (REPO_ROOT / "tokenizer.model", assets.parent / "tokenizer.model")
                              if p.is_file()), None), "tokenizer.model")
    tmp = tmp_path_factory.mktemp("grading")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, dim=16, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=64)
    checkpoint = tmp / "tiny.pt"
    torch.save({"model_args": config.to_dict(), "model": Llama(config).state_dict()}, checkpoint)
    # the upstream RoPE/optimizer files, so a pass means agreement with the course's references
    references = tmp / "references"
    references.mkdir()
    for name in (ROPE_REFERENCE, "optimizer_test.npy", "optimizer_test_clip0.9.npy"):
        shutil.copy2(assets / name, references / name)
    out = tmp / "out"

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
        "flood": optimizer.replace(solution_step, solution_step + "        while True:\n"
                                   "            print('A' * 2**20)\n"),
    }
    builds = [*[(name, lambda label, n: label, {"optimizer.py": code}, ()) for name, code in broken.items()],
              ("perfect", lambda label, n: label, None, ()), ("random", lambda label, n: rng.randrange(n), None, ())]
    student_code = set(COURSES["layernorm"].student_code)  # what prepare_submit.py zips (grade.py's default course)
    builds.append(("student-files-only", lambda label, n: label,
                   {name: None for name in solution_code() if name not in student_code}, ()))
    builds.append(("broken-rope", lambda label, n: label, {"rope.py": (REPO_ROOT / "rope.py").read_text().replace(
        "x_even * c - x_odd * s, x_even * s + x_odd * c", "x_even * c + x_odd * s, x_even * s + x_odd * c")}, ()))

    sandboxed = working_bubblewrap() is not None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tmp_marker = Path("/tmp") / f"minllama-grade-test-{uuid.uuid4().hex}.txt"
    if sandboxed:
        facts = {"references": str(references), "rope": ROPE_REFERENCE, "work": str(out / "work"),
                 "tmp_marker": str(tmp_marker), "port": server.server_address[1]}
        utils = (REPO_ROOT / "utils.py").read_text()
        builds += [(name, lambda label, n: label, {"utils.py": utils + "\n" + code.format(**facts) + "\n"}, ())
                   for name, code in IMPORT_TIME.items()]
        answer = tuple(t.tolist() for t in torch.load(assets / ROPE_REFERENCE))
        builds += [("rope-loads-reference", lambda label, n: label,
                    {"rope.py": ROPE_LOADS_REFERENCE.format(**facts)}, [assets / ROPE_REFERENCE]),
                   ("rope-memorised", lambda label, n: label, {"rope.py": ROPE_MEMORISED.format(answer=answer)}, ())]
    submissions = []
    for name, predict, overrides, extra in builds:
        folder = write_submission(tmp / "build" / name, data_dir, predict, overrides, extra).parent
        submissions.append(zip_folder(folder, tmp / f"{name}.zip"))
    outside = tmp / "outside"
    outside.mkdir()
    submissions += list(hostile_zips(tmp, outside).values())

    # 40 s per check: the passing ones take 5-15 s on two busy cores, and the hanging one's 40 s
    # pass while the others are graded. Run from another folder, with paths relative to it: the
    # sandbox must get them resolved.
    elsewhere = os.getcwd()
    os.chdir(tmp)
    try:
        code = grade.main([*(str(path.relative_to(tmp)) for path in submissions), "--out", "out",
                           "--checkpoint", "tiny.pt",
                           "--reference-dir", str(references), "--data-dir", str(data_dir),
                           "--perplexity-model", str(checkpoint), "--tokenizer", str(tokenizer),
                           "--max-perplexity", "1e9", "--timeout", "40", "--memory-mb", "1500",
                           "--max-bytes", str(16 * 2**20), "--jobs", "3",
                           *([] if sandboxed else ["--unsafe-no-sandbox"])])
    finally:
        os.chdir(elsewhere)
        server.shutdown()
    assert code == 0
    reports = {p.stem: json.loads(p.read_text()) for p in (out / "reports").glob("*.json")}
    yield {"reports": reports, "out": out, "outside": outside, "tmp": tmp, "references": references,
           "tmp_marker": tmp_marker, "sandboxed": sandboxed, "checkpoint": checkpoint}
    tmp_marker.unlink(missing_ok=True)


def test_perfect_submission_gets_an_a(batch):
    report = batch["reports"]["perfect"]
    assert report["andrew_id"] == ANDREW_ID
    assert {c["status"] for c in report["checks"].values()} == {"passed"}, report["checks"]
    assert report["predictions"]["sst-dev-finetuning-output.txt"]["accuracy"] == 1.0
    assert report["predictions"]["cfimdb-test-finetuning-output.txt"]["accuracy"] is None  # placeholders
    assert report["generations"]["generated-sentence-temp-0.txt"]["perplexity"] > 1
    assert report["grade"] == "A", report["reasons"]


def test_a_submission_of_the_student_files_alone_gets_every_check(batch):
    """prepare_submit.py zips the student's files only: the grader brings the rest from the
    solution, as the course's skeleton lays it out (its import closure), and every check runs."""
    report = batch["reports"]["student-files-only"]
    assert {c["status"] for c in report["checks"].values()} == {"passed"}, report["checks"]
    taken = set(report["support_modules_from_solution"])
    assert {"config.py", "tokenizer.py", "minllama/support/rope_scaling.py", "minllama/support/course.py"} <= taken


def test_points_per_check_and_per_output_file_beside_the_letter(batch):
    perfect, rope = batch["reports"]["perfect"], batch["reports"]["broken-rope"]
    points = COURSES["layernorm"].points()
    assert perfect["max_score"] == sum(points.values()) and perfect["score"] == perfect["max_score"]
    assert list(perfect["points"]) == list(points)
    assert rope["score"] == perfect["max_score"] - points["rope"] - points["sanity"]
    assert "score 120 of 120 points" in (batch["out"] / "reports" / "perfect.md").read_text()


def test_reasons_are_sentences_that_name_each_failing_check(batch):
    reasons = batch["reports"]["broken-rope"]["reasons"]
    assert [reason.split(":")[0] for reason in reasons] == ["The RoPE check (rope_test.py) failed",
                                                          "The sanity check (sanity_check.py) failed"]
    assert all(reason.endswith(".") for reason in reasons)
    reasons = batch["reports"]["failing-optimizer"]["reasons"]
    assert len(reasons) == 1 and reasons[0].startswith("The optimizer check (optimizer_test.py) failed: ")


def test_an_output_flood_is_stopped_and_named(batch):
    report = batch["reports"]["flood"]
    optimizer = report["checks"]["optimizer"]
    assert optimizer["status"] == "output limit" and optimizer["detail"].startswith("output limit (256 MiB) exceeded")
    assert "AAAA" not in " ".join(report["reasons"])


def test_every_check_names_its_sandbox_and_what_it_was_compared_with(batch):
    report = batch["reports"]["perfect"]
    assert isinstance(report["seed"], int)
    described = "bubblewrap" if batch["sandboxed"] else "none (--unsafe-no-sandbox)"
    for name, check in report["checks"].items():
        assert check["sandbox"].startswith(described), check
        assert check["compared with"][-1] == f"inputs drawn with seed {report['seed']}"
    assert report["checks"]["rope"]["compared with"][0] == f"upstream reference {ROPE_REFERENCE}"
    # not stories42M.pt: no upstream reference applies, the solution on the given checkpoint does
    assert report["checks"]["sanity"]["checkpoint"] == str(batch["checkpoint"])  # resolved: given as tiny.pt
    assert report["checks"]["sanity"]["compared with"][0] == "the solution on the upstream batch"
    assert f"ran on `{batch['checkpoint']}`" in (batch["out"] / "reports" / "perfect.md").read_text()


def test_random_predictions_get_an_a_minus(batch):
    report = batch["reports"]["random"]
    assert report["checks"]["optimizer"]["status"] == "passed"
    assert report["grade"] == "A-"
    assert any("below the reference" in reason for reason in report["reasons"])


def test_failing_optimizer_is_below_b_plus(batch):
    report = batch["reports"]["failing-optimizer"]
    assert report["checks"]["optimizer"]["status"] == "failed"
    assert report["checks"]["sanity"]["status"] == "passed"
    assert report["grade"] == "B or below"


def test_hanging_submission_is_stopped_and_reported(batch):
    report = batch["reports"]["hanging"]
    assert report["checks"]["optimizer"]["status"] == "timeout"
    assert report["checks"]["rope"]["status"] == "passed"
    assert report["grade"] == "B or below"


def test_unbounded_allocation_hits_the_memory_limit(batch):
    report = batch["reports"]["memory-hog"]
    assert report["checks"]["optimizer"]["status"] == "memory", report["checks"]["optimizer"]
    assert report["grade"] == "B or below"


@pytest.mark.parametrize("name, evidence", [("reads-passwd", "'/etc/passwd'"), ("reads-references", "'{references}'"),
                                            ("lists-submissions", "'{out}/work'"),
                                            ("writes-reference-dir", "'{references}/planted.txt'"),
                                            ("http-request", "urlopen error")])
def test_import_time_snooping_fails_in_the_sandbox(batch, name, evidence):
    require_bubblewrap(batch)
    evidence = evidence.format(**batch)
    report = batch["reports"][name]
    for check, result in report["checks"].items():
        assert result["status"] == "error" and evidence in result["detail"], (check, result)
    assert report["grade"] == "B or below"


def test_nothing_reaches_the_reference_dir_tmp_or_the_network(batch):
    require_bubblewrap(batch)
    assert sorted(p.name for p in batch["references"].iterdir()) == sorted(
        [ROPE_REFERENCE, "optimizer_test.npy", "optimizer_test_clip0.9.npy"])
    assert RecordingHandler.requests == []
    assert not batch["tmp_marker"].exists()
    # the write went to the sandbox's own /tmp, so the submission itself worked
    assert {c["status"] for c in batch["reports"]["writes-tmp"]["checks"].values()} == {"passed"}


def test_a_rope_that_reads_the_reference_file_does_not_pass(batch):
    require_bubblewrap(batch)
    report = batch["reports"]["rope-loads-reference"]
    assert "checks" in report, report
    rope = report["checks"]["rope"]
    assert rope["status"] == "error" and "no reference file to read" in rope["detail"], rope


def test_a_rope_that_memorised_the_answer_fails_on_drawn_inputs(batch):
    require_bubblewrap(batch)
    rope = batch["reports"]["rope-memorised"]["checks"]["rope"]
    assert rope["status"] == "failed", rope
    assert "inputs drawn with seed" in rope["detail"] and "upstream reference" not in rope["detail"]


@pytest.mark.parametrize("name, reason", [("dotdot", "'..'"), ("absolute", "absolute path"),
                                          ("symlink", "symbolic link"), ("bomb", "unpacks to"),
                                          ("lying", "zeros.txt"), ("garbage", "not a zip")])
def test_hostile_zips_are_rejected(batch, name, reason):
    report = batch["reports"][name]
    assert report["status"] == "rejected" and report["grade"] == "not graded"
    assert reason in report["reasons"][0]


def test_nothing_is_written_outside_the_work_folder(batch):
    out, outside, tmp = batch["out"], batch["outside"], batch["tmp"]
    assert list(outside.iterdir()) == []
    assert not (tmp / "escaped.txt").exists() and not (out / "escaped.txt").exists()
    assert not any(p.name == "escaped.txt" for p in tmp.rglob("*"))


def test_work_folders_are_deleted_after_grading(batch):
    assert sorted(p.name for p in batch["out"].iterdir()) == ["grades.csv", "reports"]


def test_batch_csv_and_markdown(batch):
    reports, out = batch["reports"], batch["out"]
    rows = (out / "grades.csv").read_text().splitlines()
    assert len(rows) == 1 + len(reports)
    assert "# Grading report: perfect" in (out / "reports" / "perfect.md").read_text()


# ----------------------------------------------------------------------------- without a batch

@pytest.fixture
def quick_run(tmp_path, monkeypatch):
    """grade.main on one unreadable zip (no check to run), without stories42M.pt or a perplexity
    model; returns a function of the extra flags giving (exit code, out folder)."""
    references = require(find_assets(), "grader reference files")
    data_dir = require(grade.find_data_dir(), "gold data")
    monkeypatch.setattr(grade, "UPSTREAM_CHECKPOINT", tmp_path / "stories42M.pt")
    monkeypatch.setattr(grade, "default_perplexity_model", lambda: None)
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"not a zip")

    def run(*flags):
        out = tmp_path / "out"
        code = grade.main([str(garbage), "--out", str(out), "--reference-dir", str(references),
                           "--data-dir", str(data_dir), *flags])
        return code, out
    return run


def test_refuses_to_grade_without_a_sandbox(quick_run, monkeypatch, capsys):
    def unavailable():
        raise sandbox.SandboxUnavailable("bubblewrap (bwrap) is not installed")
    monkeypatch.setattr(grade, "find_bubblewrap", unavailable)
    code, out = quick_run()
    message = capsys.readouterr().err
    assert code == 2 and not (out / "reports").exists()
    assert "refusing to grade" in message and "--unsafe-no-sandbox" in message and "read every file" in message
    code, out = quick_run("--unsafe-no-sandbox")
    assert code == 0 and "only the time and memory limits hold" in capsys.readouterr().err


def test_warns_at_start_up_without_stories42m(quick_run, capsys):
    code, _ = quick_run("--unsafe-no-sandbox")
    message = capsys.readouterr().err
    assert code == 0
    assert "stories42M.pt not found" in message and "B or below" in message and "--checkpoint" in message


def test_a_missing_checkpoint_is_an_error_before_grading(quick_run, tmp_path, capsys):
    code, out = quick_run("--unsafe-no-sandbox", "--checkpoint", str(tmp_path / "nowhere.pt"))
    assert code == 1 and f"--checkpoint {tmp_path / 'nowhere.pt'} not found" in capsys.readouterr().err
    assert not out.exists()


def test_keep_keeps_the_work_folders(quick_run):
    _, out = quick_run("--unsafe-no-sandbox", "--keep")
    assert (out / "work" / "garbage").is_dir() and (out / "drawn-inputs" / "rope.npz").is_file()
    _, out = quick_run("--unsafe-no-sandbox")
    assert not (out / "work").exists() and not (out / "drawn-inputs").exists()


def test_a_skipped_check_is_named_and_a_passing_one_is_not():
    checks_run = {"rope": {"status": "passed"}, "optimizer": {"status": "passed"},
                  "sanity": {"status": "skipped", "detail": "no checkpoint for the sanity check"}}
    grade_, reasons = rubric.apply_rubric({"checks": checks_run, "predictions": {}}, "layernorm")
    assert (grade_, reasons) == ("B or below", ["The sanity check (sanity_check.py) was skipped: no checkpoint for "
                                                "the sanity check."])


def test_a_submission_for_the_other_course_is_not_graded(tmp_path, monkeypatch, capsys):
    """A CMU (layernorm) submission graded as the LUH (rmsnorm) course: it has lora.py and the LoRA
    outputs, which only the CMU course has, so it is reported, not given the rmsnorm grade."""
    data_dir = require(grade.find_data_dir(), "gold data")
    monkeypatch.setattr(grade, "default_perplexity_model", lambda: None)
    folder = write_submission(tmp_path / "cmu", data_dir, lambda label, n: label).parent
    code = grade.main([str(folder), "--out", str(tmp_path / "out"), "--variant", "rmsnorm", "--unsafe-no-sandbox",
                       "--reference-dir", str(require(find_assets(), "grader reference files")),
                       "--data-dir", str(data_dir)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "reports" / "cmu.json").read_text())
    assert report["status"] == "wrong course" and report["grade"] == "not graded"
    assert "for the layernorm course (it has lora.py" in report["reasons"][0]
    assert "--variant layernorm" in report["reasons"][0] and "checks" not in report


def test_what_tells_a_submission_s_course(tmp_path):
    (tmp_path / "optimizer.py").write_text("class AdamW:\n    pass\n")
    assert list(unpack.course_evidence(tmp_path)) == ["rmsnorm"]
    (tmp_path / "minllama" / "support").mkdir(parents=True)
    (tmp_path / "minllama" / "support" / "course.py").write_text('THIS_COURSE: str | None = "layernorm"\n')
    (tmp_path / "optimizer.py").write_text("def step(max_grad_norm=None): ...\n")
    assert unpack.course_evidence(tmp_path) == {
        "layernorm": ["minllama/support/course.py names it (THIS_COURSE = 'layernorm')"]}


def test_a_check_log_keeps_its_first_and_last_kilobyte(tmp_path):
    run = sandbox.run_limited([sys.executable, "-c", "print('B' * 5000 + 'END')"], tmp_path, {}, 30, 2000,
                              tmp_path / "check.log")
    log = (tmp_path / "check.log").read_text()
    assert run.code == 0 and run.output_bytes == 5004 and not run.output_limit_hit
    assert log.startswith("B" * 1024) and log.endswith("END\n") and "[... 2956 bytes cut ...]" in log


@pytest.fixture
def open_tmp():
    """A temporary folder outside pytest's base folder, which another pytest session makes private
    again (0700) when it starts: an unprivileged account must reach this one."""
    folder = Path(tempfile.mkdtemp(prefix="minllama-grade-test-"))
    yield folder
    sandbox.remove(folder)


def test_the_container_mode_runs_as_an_account_that_cannot_read_the_references(open_tmp):
    """Where bubblewrap cannot start (a container as root), the checks run as an unprivileged account."""
    if os.geteuid() != 0:
        pytest.skip("the container mode needs root (Gradescope's container runs the grader as root)")
    tmp_path = open_tmp
    private, shared = tmp_path / "references", tmp_path / "shared"
    for folder in (private, shared, tmp_path / "ro", tmp_path / "rw"):
        folder.mkdir()
    (private / "answer.data").write_text("the answer")
    (tmp_path / "ro" / "harness.py").write_text("print('harness')")
    mode = sandbox.ContainerAccount("bwrap: no namespaces", private=[private])
    views = [sandbox.View("ro", tmp_path / "ro"), sandbox.View("rw", tmp_path / "rw", writable=True)]
    mode.prepare(views)
    probe = ("import os\n"
             "def attempt(what, action):\n"
             "    try:\n        action()\n        print(what, 'allowed')\n"
             "    except OSError:\n        print(what, 'refused')\n"
             f"attempt('read references', lambda: open({str(private / 'answer.data')!r}).read())\n"
             f"attempt('read ro', lambda: open({str(tmp_path / 'ro' / 'harness.py')!r}).read())\n"
             f"attempt('write ro', lambda: open({str(tmp_path / 'ro' / 'x')!r}, 'w'))\n"
             f"attempt('write rw', lambda: open({str(tmp_path / 'rw' / 'x')!r}, 'w'))\n"
             "print(os.getuid() != 0)\n")
    run = sandbox.run_limited(mode.wrap([str(sandbox.python_in_prefix()), "-I", "-c", probe], views, None),
                              tmp_path / "rw", {}, 60, 2000, tmp_path / "probe.log", mode.max_processes)
    mode.finish()
    assert run.tail.split("\n") == ["read references refused", "read ro allowed", "write ro refused",
                                     "write rw allowed", "True", ""], run.tail
    assert "container mode" in mode.description and "unprivileged account" in mode.description


def test_the_sandbox_sees_only_its_views(tmp_path):
    """Read-only and writable views, and nothing else: not the host's files, not the network."""
    require_bubblewrap()
    bwrap = working_bubblewrap()
    listening = socket.create_server(("127.0.0.1", 0))  # the host's loopback: another network
    (tmp_path / "secret.txt").write_text("the grader's")
    for name in ("ro", "rw"):
        (tmp_path / name).mkdir()
    views = [sandbox.View("ro", tmp_path / "ro"), sandbox.View("rw", tmp_path / "rw", writable=True)]
    probe = ("import os, socket\n"
             "def attempt(what, action):\n"
             "    try:\n        action()\n        print(what, 'allowed')\n"
             "    except OSError:\n        print(what, 'refused')\n"
             f"attempt('read host', lambda: open({str(tmp_path / 'secret.txt')!r}).read())\n"
             "attempt('write ro', lambda: open('/grader/ro/x', 'w'))\n"
             "attempt('write rw', lambda: open('/grader/rw/x', 'w'))\n"
             "attempt('write usr', lambda: open('/usr/x', 'w'))\n"
             f"attempt('connect', lambda: socket.create_connection({listening.getsockname()!r}, timeout=2))\n"
             "print('etc' in os.listdir('/'), 'home' in os.listdir('/'))\n")
    done = subprocess.run(bwrap.wrap([str(sandbox.python_in_prefix()), "-I", "-c", probe], views, views[1]),
                          capture_output=True, text=True, timeout=60)
    listening.close()
    assert done.stdout.split("\n") == ["read host refused", "write ro refused", "write rw allowed",
                                       "write usr refused", "connect refused", "False False", ""], done.stderr
    assert (tmp_path / "rw" / "x").exists()


def test_a_checkpoint_too_small_for_the_upstream_batch_is_checked_on_drawn_tokens(stories260k_path, tmp_path):
    """stories260K's 512-token vocabulary cannot take the upstream sanity batch (ids up to 17953):
    the sanity check then runs on drawn token ids only, and the solution passes it."""
    expected = checks.prepare_expected({"sanity": None}, "rmsnorm", None, stories260k_path, 3, tmp_path / "drawn")
    sanity = expected["sanity"]
    assert [answer.source for answer in sanity.answers] == ["inputs drawn with seed 3"]
    assert "--drawn-only" in sanity.probe_args
    assert int(np.load(sanity.drawn_inputs)["tokens"].max()) < 512
    code = tmp_path / "submission"
    code.mkdir()
    for name, text in solution_code().items():
        (code / name).write_text(text)
    grade.prepare_run_folder(code, tmp_path / "run", "layernorm")
    result = checks.run_check("sanity", sanity, tmp_path / "run", working_bubblewrap() or sandbox.Unsandboxed(),
                              timeout_s=120, memory_mb=2000)
    assert result.status == "passed", result


def test_drawn_inputs_depend_on_the_seed_only():
    for check in ("rope", "optimizer", "sanity"):
        first, again, other = (drawn_inputs.draw(check, seed, max_grad_norm=0.9) for seed in (1, 1, 2))
        assert all(np.array_equal(first[key], again[key]) for key in first)
        assert any(first[key].shape != other[key].shape or not np.array_equal(first[key], other[key])
                   for key in first)


class TextbookAdamW(torch.optim.Optimizer):
    """Kingma & Ba's Algorithm 1 with bias-corrected moments (not the solution's folded step size),
    decoupled decay on the updated weights, as the course's reference: a correct student's AdamW."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, correct_bias=True,
                 max_grad_norm=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["max_grad_norm"] is not None:
                torch.nn.utils.clip_grad_norm_(group["params"], group["max_grad_norm"])
            (beta1, beta2), lr = group["betas"], group["lr"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                state["t"] += 1
                state["m"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = state["m"] / (1 - beta1 ** state["t"])
                v_hat = state["v"] / (1 - beta2 ** state["t"])
                p.sub_(lr * m_hat / (v_hat.sqrt() + group["eps"]))
                p.mul_(1 - lr * group["weight_decay"])


@pytest.mark.parametrize("max_grad_norm", [None, 0.9])
def test_a_correct_adamw_written_differently_passes_the_drawn_check(monkeypatch, max_grad_norm):
    """The drawn hyper-parameters stay near the upstream test's, where formula variants agree."""
    import optimizer as solution_module
    textbook_module = types.SimpleNamespace(AdamW=TextbookAdamW)
    for seed in range(5):
        inputs = drawn_inputs.draw("optimizer", seed, max_grad_norm)
        monkeypatch.setitem(sys.modules, "optimizer", solution_module)
        solution = drawn_inputs.compute("optimizer", inputs)["weight"]
        monkeypatch.setitem(sys.modules, "optimizer", textbook_module)
        textbook = drawn_inputs.compute("optimizer", inputs)["weight"]
        assert torch.allclose(textbook, solution, **checks.DRAWN_TOLERANCE), (seed, textbook - solution)


def complex_rope(query, key, head_dim, max_seq_len, theta=10000.0, positions=None):
    """RoPE as Meta's reference code writes it: each pair a complex number, multiplied by e^(i angle)."""
    frequencies = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(query.shape[1]).float(), frequencies)  # (T, head_dim // 2)
    rotation = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]

    def rotate(x):
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
        return torch.view_as_real(pairs * rotation).flatten(-2)
    return rotate(query), rotate(key)


def double_precision_angle_rope(query, key, head_dim, max_seq_len, theta=10000.0, positions=None):
    """The angles in float64, then rounded: more exact, so it differs from the solution in the last
    bits, which fails torch.allclose's default atol of 1e-8 on entries near zero."""
    frequencies = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(query.shape[1], dtype=torch.float64), frequencies)
    cos, sin = angles.cos().float()[None, :, None, :], angles.sin().float()[None, :, None, :]

    def rotate(x):
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    return rotate(query), rotate(key)


@pytest.mark.parametrize("variant", [complex_rope, double_precision_angle_rope])
def test_a_correct_rope_written_differently_passes_the_drawn_check(monkeypatch, variant):
    import rope as solution_module
    for seed in range(5):
        inputs = drawn_inputs.draw("rope", seed)
        monkeypatch.setitem(sys.modules, "rope", solution_module)
        solution = drawn_inputs.compute("rope", inputs)
        monkeypatch.setitem(sys.modules, "rope", types.SimpleNamespace(apply_rotary_emb=variant))
        other = drawn_inputs.compute("rope", inputs)
        for name in ("query", "key"):
            assert torch.allclose(other[name], solution[name], **checks.DRAWN_TOLERANCE), (seed, name)


def test_folder_submissions_are_copied_without_following_symlinks(tmp_path):
    folder = tmp_path / "submission" / ANDREW_ID
    folder.mkdir(parents=True)
    (folder / "llama.py").write_text("x = 1\n")
    unpack.safe_copy_folder(folder.parent, tmp_path / "copy", unpack.ArchiveLimits())
    assert (tmp_path / "copy" / ANDREW_ID / "llama.py").read_text() == "x = 1\n"
    (folder / "secret.py").symlink_to(tmp_path / "elsewhere.py")
    with pytest.raises(unpack.Rejected, match="symbolic link"):
        unpack.safe_copy_folder(folder.parent, tmp_path / "copy2", unpack.ArchiveLimits())


def test_flagging_outlier_generations():
    reports = [{"generations": {name: {"perplexity": p} for name in rubric.GENERATION_FILES}}
               for p in (10, 11, 12, 13, 90, 5000)]
    grade.flag_generations(reports, max_perplexity=1000)
    flags = [r["generations"]["generated-sentence-temp-0.txt"].get("flag") for r in reports]
    assert flags[:4] == [None] * 4 and "median" in flags[4] and "> 1000" in flags[5]
