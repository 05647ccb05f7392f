"""Where the tests find their assets, and how a missing one is reported (skipped on a laptop,
a failure under CI). A module of its own rather than conftest.py, so that test modules can
import it by a name no other conftest.py (tests/student has one) can shadow."""

import importlib
import os
from pathlib import Path

import pytest

from utils import REPO_ROOT


def asset_dirs() -> list[Path]:
    """Mirror folders (laid out like shared/assets), in the order they are searched."""
    dirs = [Path(os.environ["MINLLAMA_ASSETS"])] if os.environ.get("MINLLAMA_ASSETS") else []
    return dirs + [REPO_ROOT.parent / "shared" / "assets"]


def find_asset(repo_path: str, mirror_path: str | None = None) -> Path | None:
    """`repo_path` as setup.sh lays it out in the repository root, else `mirror_path` (default:
    the same) in a mirror; None if it is nowhere."""
    candidates = [REPO_ROOT / repo_path] + [d / (mirror_path or repo_path) for d in asset_dirs()]
    return next((path for path in candidates if path.exists()), None)


def skip_or_fail(reason: str):
    """Skip locally; fail under CI, where every asset must be present."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason, allow_module_level=True)  # also from a test module's imports


def require_module(name: str):
    """Import a test-only dependency (e.g. transformers, from requirements-dev.txt), skipping the
    test without it locally and failing under CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        skip_or_fail(f"{name} is not installed: bash setup.sh --dev")
