"""What the student checks share: small random models, the course's reference files, and a
stand-in for dropout that makes its use visible.

Every test builds a small random model (no download needed) and compares your code with an
independent computation: PyTorch's own functions (F.rms_norm, F.layer_norm,
F.scaled_dot_product_attention), the same model run another way (a whole sequence against a
KV cache, a padded batch against each sentence alone), properties the piece must have, or the
course's reference files. A test that fails with NotImplementedError points at a piece that is
still a todo. The grader checks (rope_test.py, optimizer_test.py, sanity_check.py) are the final word.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # the modules under test live in the repository root

from config import LlamaConfig  # noqa: E402
from llama import Llama  # noqa: E402


class ZeroOut(torch.nn.Module):
    """Put in place of a dropout module: everything that goes through it becomes 0, so a test sees
    whether (and where) the code under test applies it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@pytest.fixture
def zero_out():
    return ZeroOut


@pytest.fixture
def small_config():
    """small_config(**overrides): a tiny model, 4 query heads sharing 2 key/value heads (grouped-query attention)."""
    def make(**overrides) -> LlamaConfig:
        args = dict(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16, dropout=0.0)
        return LlamaConfig(**{**args, **overrides})
    return make


@pytest.fixture
def small_model(small_config):
    """small_model(seed=0, **overrides): a random Llama of small_config in eval mode."""
    def make(seed: int = 0, **overrides) -> Llama:
        torch.manual_seed(seed)
        return Llama(small_config(**overrides)).eval()
    return make


@pytest.fixture
def lively_model(small_model):
    """lively_model(seed=0): a small random model whose next token depends on the context. At the
    usual initialisation (std 0.02) a tiny model's output is dominated by the current token's own
    embedding, so greedy decoding repeats the last token whatever came before; weights of
    std 3/sqrt(fan_in) let attention matter."""
    def make(seed: int = 0) -> Llama:
        model = small_model(seed)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if weight.dim() == 2:
                    scale = 1.0 if name.startswith("tok_embeddings") else 3.0
                    weight.copy_(scale * torch.randn(weight.shape, generator=generator) / weight.shape[1] ** 0.5)
        return model
    return make


@pytest.fixture
def reference_file():
    """reference_file(name): a grader reference file, in the repository root or the $MINLLAMA_ASSETS mirror."""
    def find(name: str) -> Path:
        candidates = [REPO_ROOT / name, REPO_ROOT.parent / "shared" / "assets" / "reference" / name]
        if os.environ.get("MINLLAMA_ASSETS"):
            candidates.insert(1, Path(os.environ["MINLLAMA_ASSETS"]) / "reference" / name)
        for path in candidates:
            if path.is_file():
                return path
        if os.environ.get("CI"):
            pytest.fail(f"{name} not found (looked in {[str(c) for c in candidates]})")
        pytest.skip(f"{name} not found: run `bash setup.sh`")
    return find


def pytest_unconfigure(config):
    """At the very end of a run of these checks alone: where the assignment stands
    (minllama/tools/progress.py), with the grader checks run too when no -k or -m left a check out."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    here, start = Path(__file__).resolve().parent, Path(config.invocation_params.dir)
    targets = [(start / arg.split("::")[0]).resolve() for arg in config.args]
    if reporter is None or not all(target == here or here in target.parents for target in targets):
        return  # no terminal, or a run of more than the student checks (the solution's own suite)
    from minllama.tools.progress import outcomes_of, summary

    whole = not config.option.keyword and not config.option.markexpr
    reporter.write(summary(REPO_ROOT, outcomes_of(reporter.stats), run_graders=whole))
