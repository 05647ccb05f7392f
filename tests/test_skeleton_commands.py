"""Every command a skeleton's README teaches runs in the skeleton itself, as a student runs it.

For each course: build the skeleton, fill its todos with the solution, lay out its assets with its
own setup.sh, and run in it, with no PYTHONPATH and nothing of the solution importable, every
`python ...` line of its README (on a tiny checkpoint and a few lines of data), then every flag its
`run_llama.py -h` offers, once each. A crash anywhere, a missing output file, or a module that the
course's commands reach but the skeleton lacks fails the test: the worst bug a course repository
can have. The unfilled skeleton stops at its first todo with NotImplementedError, never with an
import error.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config import LlamaConfig
from llama import Llama
from testkit import asset_dirs, skip_or_fail
from utils import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "instructor"))
import make_reference  # noqa: E402
import make_skeleton as ms  # noqa: E402
from fill_skeleton import fill  # noqa: E402

pytestmark = pytest.mark.slow

# How a README command is shrunk to run in seconds: the tiny model, a few lines of each split, one epoch.
TINY = {"generate": [], "classify": ["--limit", "6", "--epochs", "1"]}
# A value for each flag whose default is None and whose type says nothing of a valid one (paths);
# other flags get their last choice, 1 for an int, 0.1 for a float, or nothing (store_true).
FLAG_VALUES = {"--train": "data/sst-train.txt", "--dev": "data/sst-dev.txt", "--test": "data/sst-test.txt",
               "--label-names": "data/sst-label-mapping.json", "--pretrained-model-path": "tiny.pt",
               "--tokenizer": "tokenizer.model", "--dev_out": "flag-dev.txt", "--test_out": "flag-test.txt",
               "--summary_out": "flag-summary.json", "--checkpoint_out": "flag.pt", "--out_dir": "flag-out",
               "--checkpoint_in": "finetune-1-2e-05.pt", "--generated_sentence_low_temp_out": "flag-0.txt",
               "--generated_sentence_high_temp_out": "flag-1.txt", "--lr_schedule": "linear",
               "--max_steps": "2", "--lr": "1e-3", "--min_lr": "1e-4"}
# Run inside the skeleton (its own modules only): list each flag of run_llama.py's parser, or run
# run_llama.main on each command line of a JSON file in this one process, keeping the tracebacks.
LIST_FLAGS = """
import json, run_llama
parser, _ = run_llama.build_parser()
print(json.dumps([{"flag": a.option_strings[-1], "nargs": a.nargs, "choices": list(a.choices or []),
                   "type": getattr(a.type, "__name__", None)}
                  for a in parser._actions if a.option_strings and a.dest != "help"]))
"""
RUN_ALL = """
import json, sys, traceback, run_llama
crashes = {}
for argv in json.load(open(sys.argv[1])):
    try:
        run_llama.main(argv)
    except SystemExit:
        pass
    except BaseException:
        crashes[" ".join(argv)] = traceback.format_exc()
print(json.dumps(crashes))
"""


def clean_env(mirror: Path) -> dict:
    """The environment of a student's shell: no PYTHONPATH, the assets from the mirror."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MINLLAMA_")}
    return {**env, "MINLLAMA_ASSETS": str(mirror), "MINLLAMA_CACHE": "off"}


def run(command: list[str], tree: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)


def readme_commands(readme: str) -> list[list[str]]:
    """The `python ...` lines of a README's code blocks (indented by four spaces), comments cut."""
    lines = [line.strip() for line in readme.splitlines() if line.startswith("    python ")]
    return [shlex.split(line, comments=True) for line in lines]


def shrunk(command: list[str]) -> list[str]:
    """A README command on the tiny setting (the last occurrence of a flag wins in argparse)."""
    if command[1] != "run_llama.py":
        return command
    option = command[command.index("--option") + 1]
    return [*command, "--pretrained-model-path", "tiny.pt", *TINY["generate" if option == "generate" else "classify"]]


def with_cfimdb(command: list[str]) -> list[str]:
    """The README's "run the same with the cfimdb files"."""
    return [part.replace("sst-", "cfimdb-") for part in command]


@pytest.fixture(scope="module", params=list(ms.VARIANTS))
def skeleton(request, tmp_path_factory):
    """A filled skeleton of one course with its assets, a tiny checkpoint and its sanity reference."""
    mirror = next((d for d in asset_dirs() if (d / "reference" / "rotary_embedding_actual.data").is_file()), None)
    if mirror is None:
        skip_or_fail("the asset mirror (MINLLAMA_ASSETS) is not found")
    folder = tmp_path_factory.mktemp(request.param)
    tree = folder / "skeleton"
    ms.build(tree, request.param, assets=mirror / "reference")
    env = clean_env(mirror)
    unfilled = run([sys.executable, "run_llama.py", "--option", "generate"], tree, env)
    fill(tree)
    setup = run(["bash", "setup.sh", "--assets-only"], tree, env)
    assert setup.returncode == 0, setup.stdout[-2000:] + setup.stderr[-2000:]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=96,
                         norm_type=ms.VARIANTS[request.param].course.norm)
    torch.save({"model_args": config.to_dict(), "model": Llama(config).state_dict()}, tree / "tiny.pt")
    make_reference.write_references(folder, tree / "tiny.pt", norms=[config.norm_type])
    return request.param, tree, env, folder / f"sanity_check_{config.norm_type}.data", unfilled


def test_the_unfilled_skeleton_stops_at_a_todo(skeleton):
    _, _, _, _, unfilled = skeleton
    assert unfilled.returncode != 0 and "NotImplementedError" in unfilled.stderr, unfilled.stderr[-2000:]
    assert "ModuleNotFoundError" not in unfilled.stderr and "ImportError" not in unfilled.stderr


def test_nothing_of_the_solution_is_importable_there(skeleton):
    _, tree, env, _, _ = skeleton
    probe = run([sys.executable, "-c", "import minllama.methods"], tree, env)
    assert probe.returncode != 0 and "No module named 'minllama.methods'" in probe.stderr, probe.stderr


def test_every_readme_command_runs_in_the_skeleton(skeleton):
    variant, tree, env, reference, _ = skeleton
    commands = readme_commands((tree / "README.md").read_text())
    options = [c[c.index("--option") + 1] for c in commands if "--option" in c]
    assert options == list(ms.VARIANTS[variant].course.options), options
    for command in commands:
        if command[1] == "sanity_check.py":  # needs stories42M.pt: the grader's way, on the tiny model
            command = [*command, "--checkpoint", "tiny.pt", "--reference", str(reference)]
        runs = [shrunk(command)] + ([shrunk(with_cfimdb(command))] if "data/sst-dev.txt" in command else [])
        for argv in runs:
            if argv[1] == "prepare_submit.py" and argv[2].endswith(".zip") and not (tree / argv[2]).exists():
                continue
            done = run([sys.executable, *argv[1:]], tree, env)
            assert done.returncode == 0 and "Traceback" not in done.stderr, \
                f"$ {shlex.join(argv)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    course = ms.VARIANTS[variant].course
    missing = [name for name in course.output_files() if not (tree / name).is_file()]
    assert not missing, missing
    assert (tree / "ANDREWID.zip").is_file()


def child(tree: Path, env: dict, script: str, *args: str) -> subprocess.CompletedProcess:
    """Run a script from the skeleton's root, as a file of the skeleton would be run."""
    path = tree / "probe_child.py"
    path.write_text(script)
    try:
        return run([sys.executable, path.name, *args], tree, env, timeout=600)
    finally:
        path.unlink()


def test_every_flag_of_the_skeleton_runs_without_a_traceback(skeleton, tmp_path):
    variant, tree, env, _, _ = skeleton
    listed = child(tree, env, LIST_FLAGS)
    assert listed.returncode == 0, listed.stderr
    flags = json.loads(listed.stdout)
    usage = run([sys.executable, "run_llama.py", "-h"], tree, env).stdout.split("\n\n")[0]
    assert {f["flag"] for f in flags} == {word.strip("[]") for word in usage.split() if word.startswith("[--")}
    base = ["--option", "finetune", "--pretrained-model-path", "tiny.pt", "--dev", "data/sst-dev.txt", "--limit", "4",
            "--epochs", "1", "--skip_test"]
    commands = []
    for flag in flags:
        name = flag["flag"]
        if name == "--option":
            values = [[choice] for choice in flag["choices"]]
        elif flag["nargs"] == 0:
            values = [[]]
        else:
            values = [[FLAG_VALUES.get(name) or (flag["choices"][-1] if flag["choices"] else
                                                 {"int": "1", "float": "0.1"}.get(flag["type"], "x"))]]
        commands += [[*base, name, *value] for value in values]
    (tmp_path / "commands.json").write_text(json.dumps(commands))
    done = child(tree, env, RUN_ALL, str(tmp_path / "commands.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    crashes = json.loads(done.stdout.splitlines()[-1])
    assert not crashes, "\n".join(f"$ run_llama.py {argv}\n{trace}" for argv, trace in crashes.items())
    unknown = run([sys.executable, "run_llama.py", "--min_p", "0.1"], tree, env)
    assert unknown.returncode == 2 and "unrecognized arguments: --min_p" in unknown.stderr
