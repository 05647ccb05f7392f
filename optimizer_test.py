"""Grader check for optimizer.AdamW: `python optimizer_test.py`.

Trains a tiny linear model, y = W x with W of shape (2, 3), to fit y = [x0 + x1, -x2]
for 1000 steps of AdamW (lr 1e-3, weight decay 1e-4) on one uniform random x per step,
and compares the final W with the course's reference weights: one run per entry of
VARIANTS below (reference file, max_grad_norm), all of them unless `--variant` picks one.
The procedure (seeds, order of random draws, loss) reproduces the upstream script
exactly, since the reference weights depend on every one of those details.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from optimizer import AdamW
from support import course
from utils import REPO_ROOT, MissingAssetError, require_file

# variant name -> (reference file, max_grad_norm), for the courses of this copy (course.py): LUH's
# reference is without clipping, CMU 2025's with 0.9.
VARIANTS = {"noclip" if c.max_grad_norm is None else f"clip{c.max_grad_norm:g}":
            (c.reference_file(course.OPTIMIZER_REFERENCE), c.max_grad_norm) for c in course.here()}


def train_toy_model(max_grad_norm: float | None, opt_class=AdamW, steps: int = 1000) -> torch.Tensor:
    """The upstream test: returns the (2, 3) weight after `steps` updates.

    `max_grad_norm` reaches the optimizer only when set: the LUH course's AdamW has no such parameter."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)  # fixes the Linear layer's initial weight
    model = torch.nn.Linear(3, 2, bias=False)
    clipping = {} if max_grad_norm is None else {"max_grad_norm": max_grad_norm}
    opt = opt_class(model.parameters(), lr=1e-3, weight_decay=1e-4, correct_bias=True, **clipping)
    for _ in range(steps):
        opt.zero_grad()
        x = torch.tensor(rng.uniform(size=3), dtype=torch.float32)
        y = torch.stack([x[0] + x[1], -x[2]])
        loss = ((y - model(x)) ** 2).sum()
        loss.backward()
        opt.step()
    return model.weight.detach()


def check_variant(name: str, folder: Path) -> bool:
    """True if AdamW reproduces the reference of this variant; prints what went wrong if not."""
    filename, max_grad_norm = VARIANTS[name]
    try:
        path = require_file(folder / filename)
    except MissingAssetError as err:
        print(err, file=sys.stderr)
        return False
    expected = torch.from_numpy(np.load(path))
    actual = train_toy_model(max_grad_norm)
    if not torch.allclose(actual, expected, atol=1e-5, rtol=1e-3):
        print(f"Optimizer test FAILED ({name}, max_grad_norm={max_grad_norm}, reference {path}):\n"
              f"expected\n{expected}\ngot\n{actual}\n"
              f"max abs difference {(actual - expected).abs().max().item():.3g}", file=sys.stderr)
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=[*VARIANTS, "all"], default="all",
                        help="which reference to check (default: all)")
    parser.add_argument("--reference-dir", type=Path, default=REPO_ROOT,
                        help="folder holding the reference .npy files (default: the repository root)")
    args = parser.parse_args()
    names = list(VARIANTS) if args.variant == "all" else [args.variant]
    results = [check_variant(name, args.reference_dir) for name in names]  # run all, report all
    if not all(results):
        return 1
    print("Optimizer test passed!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
