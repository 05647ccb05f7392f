"""How long the CA1 notebook (notebooks/ca1_exploration.ipynb) takes top to bottom.

    python bench/notebook.py            # the small setting the test suite runs (goal: at most 90 s)
    python bench/notebook.py --full     # the setting a student runs (goal: a few minutes on a laptop CPU)

The suite's tests/test_notebook.py checks what the notebook prints; the time is a figure, measured
here on a machine that is otherwise idle (the load average at the start and end is printed beside it:
a loaded machine stretches the time by about load / cores).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/notebook.py`

import nbclient  # noqa: E402  (requirements-dev.txt)
import nbformat  # noqa: E402

from utils import REPO_ROOT  # noqa: E402

NOTEBOOK = REPO_ROOT / "notebooks" / "ca1_exploration.ipynb"
GOAL_S = {"small": 90, "full": 300}


def run_notebook(small: bool, out: Path):
    """Execute every cell in a fresh kernel of this Python; returns the executed notebook."""
    os.environ.update(MINLLAMA_NOTEBOOK_OUT=str(out / "runs"), MINLLAMA_CACHE=str(out / "cache"), MPLBACKEND="Agg")
    os.environ["MINLLAMA_NOTEBOOK_SMALL"] = "1" if small else "0"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=1800, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    return notebook


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the student's setting instead of the suite's small one")
    setting = "full" if parser.parse_args().full else "small"
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run_notebook(setting == "small", Path(out))
        seconds = time.perf_counter() - started
    verdict = "met" if seconds <= GOAL_S[setting] else "missed"
    print(f"notebook, {setting} setting: {seconds:.0f} s (goal {GOAL_S[setting]} s: {verdict}); "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
