"""setup.sh lays the course assets out from a local mirror (MINLLAMA_ASSETS).

Each test runs `setup.sh --assets-only` (no packages installed, nothing downloaded) in a temporary
copy of the repository against a synthetic mirror: files of random bytes with the checksums written
into the copy's assets.sha256. That checks the mechanism (layout, SHA-256 verification, idempotence,
errors that name the file); a last test checks the committed assets.sha256 against the real mirror.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Path in the repository (the upstream layout) -> path in a mirror laid out like ../shared/assets.
LAYOUT = {
    **{f"data/{name}": f"data/{name}" for name in (
        "sst-train.txt", "sst-dev.txt", "sst-test.txt",
        "cfimdb-train.txt", "cfimdb-dev.txt", "cfimdb-test.txt",
        "sst-label-mapping.json", "cfimdb-label-mapping.json",
    )},
    "tokenizer.model": "tokenizer.model",
    "rotary_embedding_actual.data": "reference/rotary_embedding_actual.data",
    "optimizer_test.npy": "reference/optimizer_test.npy",
    "optimizer_test_clip0.9.npy": "reference/optimizer_test_clip0.9.npy",
    "sanity_check_rmsnorm.data": "reference/sanity_check_rmsnorm.data",
    "sanity_check_layernorm.data": "reference/sanity_check_layernorm.data",
    "stories260K.bin": "models/stories260K.bin",
    "data/tinyshakespeare.txt": "corpora/tinyshakespeare.txt",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def workdir(tmp_path):
    """tmp_path/repo: setup.sh with checksums of a synthetic mirror at tmp_path/mirror."""
    repo, mirror = tmp_path / "repo", tmp_path / "mirror"
    repo.mkdir()
    (repo / "setup.sh").write_text((REPO / "setup.sh").read_text())
    lines = []
    for dest, src in LAYOUT.items():
        path = mirror / src
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(256) + dest.encode())
        lines.append(f"{sha256(path)}  {dest}\n")
    (repo / "assets.sha256").write_text("".join(lines))
    return tmp_path


def run_setup(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs the copy's setup.sh from workdir (not the repository), with a relative mirror path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINLLAMA_")}
    env.update(MINLLAMA_ASSETS="mirror", PYTHON=sys.executable)
    return subprocess.run(
        ["bash", "repo/setup.sh", "--assets-only", *args], cwd=workdir, env=env,
        capture_output=True, text=True, timeout=120,
    )


def test_good_mirror_lays_out_every_asset(workdir):
    result = run_setup(workdir)
    assert result.returncode == 0, result.stderr
    for dest, src in LAYOUT.items():
        assert (workdir / "repo" / dest).read_bytes() == (workdir / "mirror" / src).read_bytes(), dest
    assert not list((workdir / "repo").rglob("*.part"))
    assert f"{len(LAYOUT)} of them put in place now" in result.stdout
    # stories42M.pt is optional: missing from the mirror, it is reported with where to get it.
    assert "stories42M.pt (optional)" in result.stdout
    assert "https://www.cs.cmu.edu/~vijayv/stories42M.pt" in result.stdout


def test_second_run_has_nothing_to_do(workdir):
    assert run_setup(workdir).returncode == 0
    before = {dest: (workdir / "repo" / dest).stat().st_mtime_ns for dest in LAYOUT}
    result = run_setup(workdir)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert ": ready" not in result.stdout
    assert before == {dest: (workdir / "repo" / dest).stat().st_mtime_ns for dest in LAYOUT}


def test_a_damaged_file_in_place_is_replaced(workdir):
    assert run_setup(workdir).returncode == 0
    damaged = workdir / "repo" / "data" / "sst-dev.txt"
    damaged.write_text("not the data\n")
    result = run_setup(workdir)
    assert result.returncode == 0, result.stderr
    assert "data/sst-dev.txt: wrong checksum, replacing it" in result.stdout
    assert damaged.read_bytes() == (workdir / "mirror" / "data" / "sst-dev.txt").read_bytes()


@pytest.mark.parametrize("dest", ["data/sst-dev.txt", "optimizer_test.npy", "data/tinyshakespeare.txt"])
def test_corrupted_file_in_mirror_is_named(workdir, dest):
    src = LAYOUT[dest]
    with open(workdir / "mirror" / src, "ab") as f:
        f.write(b"one more byte")
    result = run_setup(workdir)
    assert result.returncode != 0
    assert f"{src}: checksum mismatch in mirror {workdir / 'mirror'}" in result.stderr
    assert not (workdir / "repo" / dest).exists(), "a corrupted copy must not be put in place"
    assert not list((workdir / "repo").rglob("*.part"))


def test_missing_file_in_mirror_is_named(workdir):
    (workdir / "mirror" / "reference" / "sanity_check_layernorm.data").unlink()
    result = run_setup(workdir)
    assert result.returncode != 0
    assert f"reference/sanity_check_layernorm.data: missing from mirror {workdir / 'mirror'}" in result.stderr
    assert "sanity_check_layernorm.data" in result.stderr.splitlines()[-1]  # the "not in place yet" list


def test_offline_without_a_mirror_sets_up_what_it_can_and_names_the_rest(workdir):
    """No mirror and no network (a curl that cannot connect): every asset is tried, the Python
    environment too (here PYTHON does not exist), and the summary names all that is missing."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text("#!/bin/sh\necho 'curl: (6) Could not resolve host' >&2\nexit 6\n")
    (bin_dir / "curl").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINLLAMA_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PYTHON=str(workdir / "no-python3"))
    result = subprocess.run(["bash", "repo/setup.sh"], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    summary = result.stdout.split("setup: summary", 1)[1]
    for dest in LAYOUT:
        assert f"{dest} (required)" in summary, dest
    assert f".venv and SmolLM2 (required): {workdir / 'no-python3'} not found" in summary
    assert "stories42M.pt (optional)" in summary
    assert "run_llama.py's defaults run on SmolLM2-135M" in summary and "cannot run;" in summary
    assert "512-piece" in summary and "cannot be used with tokenizer.model" in summary
    assert "sst-train.txt" in result.stderr.splitlines()[-1]  # the "not in place yet" list, last


def _save_stories42m_like(path: Path, dim: int) -> None:
    """A checkpoint in stories42M's format, with its shapes when dim is 512 (zeros, float16 for size)."""
    import torch

    emb = torch.zeros(32000, 512, dtype=torch.float16) if dim == 512 else torch.zeros(4, dim)
    state = {"_orig_mod.tok_embeddings.weight": emb}
    state.update({f"_orig_mod.layers.{i}.attention.wq.weight": torch.zeros(1) for i in range(8)})
    args = dict(dim=dim, n_layers=8, n_heads=8, n_kv_heads=8, vocab_size=32000, multiple_of=32,
                max_seq_len=1024, dropout=0.0)
    torch.save({"model_args": args, "model": state}, path)


@pytest.mark.slow
def test_stories42m_from_mirror_is_checked_by_loading(workdir):
    _save_stories42m_like(workdir / "mirror" / "models" / "stories42M.pt", dim=512)
    result = run_setup(workdir)
    assert result.returncode == 0, result.stderr
    assert "stories42M.pt: ready" in result.stdout
    assert "stories42M.pt (optional)" not in result.stdout


@pytest.mark.slow
def test_wrong_stories42m_in_mirror_is_an_error(workdir):
    _save_stories42m_like(workdir / "mirror" / "models" / "stories42M.pt", dim=256)
    result = run_setup(workdir)
    assert result.returncode != 0
    assert "stories42M.pt" in result.stderr and "model_args['dim'] is 256, expected 512" in result.stderr
    assert not (workdir / "repo" / "stories42M.pt").exists()


def test_unknown_option_is_refused(workdir):
    result = run_setup(workdir, "--frobnicate")
    assert result.returncode == 2
    assert "unknown option '--frobnicate'" in result.stderr


def test_committed_checksums_are_those_of_the_shared_mirror():
    """assets.sha256 is SHA256SUMS of ../shared/assets with the paths mapped to the repository layout."""
    mirror = Path(os.environ.get("MINLLAMA_ASSETS", REPO.parent / "shared" / "assets"))
    if not (mirror / "SHA256SUMS").is_file():
        reason = f"no asset mirror with a SHA256SUMS at {mirror}"
        if os.environ.get("CI"):  # CI always has the mirror: never pass by skipping there
            pytest.fail(reason)
        pytest.skip(reason)
    published = {}
    for line in (mirror / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        published[path.removeprefix("./")] = digest
    committed = dict(reversed(line.split(maxsplit=1)) for line in (REPO / "assets.sha256").read_text().splitlines())
    assert committed == {dest: published[src] for dest, src in LAYOUT.items()}
