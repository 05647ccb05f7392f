"""Checks that need a GPU: bf16 autocast, fused against explicit attention, generation, a
training step and DistributedDataParallel with one process (NCCL), all on CUDA, each against
the same computation in float32 on the CPU. Skipped where PyTorch sees no CUDA device.

They import nothing beyond torch and this repository's model files, so that `bench/gpu.sh`
can run them on a GPU machine that has only its own PyTorch: with pytest
(`python -m pytest tests/test_cuda.py`) or without it (`python tests/test_cuda.py`).
MINLLAMA_TEST_DEVICE=cpu runs them on the CPU instead (with gloo for DDP), to check the
checks themselves where there is no GPU.
"""

import copy
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # also when run as a script

from config import LlamaConfig  # noqa: E402
from llama import Llama  # noqa: E402
from optimizer import AdamW  # noqa: E402

DEVICE = torch.device(os.environ.get("MINLLAMA_TEST_DEVICE", "cuda"))
AVAILABLE = DEVICE.type != "cuda" or torch.cuda.is_available()

try:
    import pytest
    pytestmark = pytest.mark.skipif(not AVAILABLE, reason="PyTorch sees no CUDA device")
except ImportError:  # run as a script on a machine without pytest
    pytest = None

TINY = dict(vocab_size=101, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48, hidden_dim=96)


def tiny_llama(seed: int = 0, **overrides) -> Llama:
    """A random float32 model on the CPU with large weights (std 0.3), so that greedy
    continuations vary from token to token."""
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    return model


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], shape, generator=torch.Generator().manual_seed(seed))


def left_padding_mask(lengths, width: int) -> torch.Tensor:
    return torch.stack([torch.arange(width) >= width - length for length in lengths]).long()


def test_float32_forward_matches_the_cpu():
    model = tiny_llama()
    x = tokens(3, 20)
    with torch.no_grad():
        want, _ = model(x, targets=x)
        got, _ = copy.deepcopy(model).to(DEVICE)(x.to(DEVICE), targets=x.to(DEVICE))
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)  # no TF32: float32 stays float32


def test_bf16_autocast_stays_close_to_float32():
    model = tiny_llama(seed=2).to(DEVICE)
    x = tokens(2, 24).to(DEVICE)
    with torch.no_grad():
        want, _ = model(x, targets=x)
        with torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16):
            got, _ = model(x, targets=x)
    assert got.dtype == torch.bfloat16  # autocast did take effect
    # bf16 keeps 8 bits of mantissa: errors of a few percent of the logits' spread on average
    # (measured 1.9% on the CPU; this large-weight model amplifies them), far from a wrong model.
    error = (got.float() - want).abs()
    assert error.mean() < 0.05 * want.std() and error.max() < 0.5 * want.std()


def test_fused_attention_matches_explicit_with_and_without_padding():
    fused = tiny_llama(seed=3).to(DEVICE)
    explicit = copy.deepcopy(fused)
    for layer in explicit.layers:
        layer.attention.fused = False
    x = tokens(3, 16).to(DEVICE)
    mask = left_padding_mask([16, 9, 4], 16).to(DEVICE)
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            a, _ = fused(x, targets=x, **kwargs)
            b, _ = explicit(x, targets=x, **kwargs)
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_generation_matches_the_cpu_and_the_cache_changes_nothing():
    model = tiny_llama(seed=4)
    prompts = tokens(2, 7, seed=5)
    mask = left_padding_mask([7, 4], 7)
    want = model.generate(prompts, 12, temperature=0.0, attention_mask=mask)
    on_device = copy.deepcopy(model).to(DEVICE)
    cached = on_device.generate(prompts.to(DEVICE), 12, temperature=0.0, attention_mask=mask.to(DEVICE))
    uncached = on_device.generate(prompts.to(DEVICE), 12, temperature=0.0, attention_mask=mask.to(DEVICE),
                                  use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached.cpu(), want)


def training_step(model: Llama, x: torch.Tensor) -> float:
    optimizer = AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    logits, _ = model(x[:, :-1], targets=x[:, 1:])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    return loss.item()


def test_training_step_matches_the_cpu():
    model = tiny_llama(seed=6).train()
    on_device = copy.deepcopy(model).to(DEVICE)
    x = tokens(4, 17, seed=7)
    assert abs(training_step(model, x) - training_step(on_device, x.to(DEVICE))) < 1e-4
    for (name, want), got in zip(model.named_parameters(), on_device.parameters()):
        torch.testing.assert_close(got.detach().cpu(), want.detach(), atol=1e-5, rtol=1e-4, msg=name)


def test_ddp_with_one_process_matches_plain_training():
    """DistributedDataParallel over a group of one (NCCL on a GPU): the same step as without it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = tiny_llama(seed=8).train().to(DEVICE)
    wrapped_copy = copy.deepcopy(model)
    x = tokens(4, 17, seed=9).to(DEVICE)
    plain_loss = training_step(model, x)
    backend = "nccl" if DEVICE.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group(backend, init_method=f"file://{folder}/rendezvous", rank=0, world_size=1)
        try:
            ddp = DistributedDataParallel(wrapped_copy, device_ids=[DEVICE.index or 0] if DEVICE.type == "cuda" else None)
            optimizer = AdamW(ddp.parameters(), lr=1e-3, weight_decay=0.01)
            logits, _ = ddp(x[:, :-1], targets=x[:, 1:])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
            loss.backward()
            optimizer.step()
        finally:
            dist.destroy_process_group()
    assert abs(loss.item() - plain_loss) < 1e-6
    for want, got in zip(model.parameters(), wrapped_copy.parameters()):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


if __name__ == "__main__":
    if not AVAILABLE:
        print("tests/test_cuda.py: PyTorch sees no CUDA device: skipped")
        sys.exit(0)
    failed = 0
    for name, test in [(n, f) for n, f in list(globals().items()) if n.startswith("test_")]:
        try:
            test()
            print(f"PASSED {name}")
        except Exception as error:  # report every check, then fail once
            failed += 1
            print(f"FAILED {name}: {type(error).__name__}: {error}")
    print(f"{failed} failed" if failed else "all passed", f"on {DEVICE}")
    sys.exit(1 if failed else 0)
