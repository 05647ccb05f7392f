"""The CA1 notebook (notebooks/ca1_exploration.ipynb): its jupytext script and the notebook hold the
same cells, the notebook is committed without outputs, and it runs top to bottom (nbclient, in a
kernel of this Python) on its small setting. Its time is a figure, not a test: bench/notebook.py
measures it against the 90 s goal."""

import json
import sys
import time

import pytest

from testkit import require_module
from utils import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "ca1_exploration.ipynb"
SCRIPT = NOTEBOOK.with_suffix(".py")

def cells(path):
    jupytext = require_module("jupytext")
    return [(cell.cell_type, cell.source.strip()) for cell in jupytext.read(path).cells]


def test_script_and_notebook_hold_the_same_cells():
    """Edit either, then `jupytext --sync notebooks/ca1_exploration.ipynb` (it keeps the cells' ids)."""
    assert cells(SCRIPT) == cells(NOTEBOOK)


def test_the_notebook_is_committed_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    ran = [i for i, cell in enumerate(notebook["cells"]) if cell.get("outputs") or cell.get("execution_count")]
    assert ran == [], f"cells {ran} carry outputs: write it afresh (jupytext --to ipynb notebooks/{SCRIPT.name})"


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_on_its_small_setting(tmp_path, monkeypatch, smollm2_path):
    nbformat, nbclient = require_module("nbformat"), require_module("nbclient")
    require_module("ipykernel")
    monkeypatch.setenv("MINLLAMA_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MINLLAMA_NOTEBOOK_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("MINLLAMA_CACHE", str(tmp_path / "cache"))  # SmolLM2 decoded once, read back in section 5
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    started = time.perf_counter()
    client.execute()
    print(f"the notebook ran in {time.perf_counter() - started:.0f} s ({sys.executable}; bench/notebook.py times it)")
    text = "\n".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    assert "small setting" in text and "chat template:" in text and "carry the loss" in text
    assert "LoRA rank 4 trains" in text and (tmp_path / "runs" / "attention.png").is_file()
