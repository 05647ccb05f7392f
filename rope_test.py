"""Grader check for rope.apply_rotary_emb: `python rope_test.py`.

Rotates a query of 2s and a key of 3s, each (batch 1, 2 positions, 2 heads, head_dim 4),
and compares them with the course's reference `rotary_embedding_actual.data`, a
torch.save'd (query, key) pair. Position 0 is not rotated at all; position 1 shows
whether the pairs, their angles and the direction of rotation are right. The tolerances
are torch.allclose's defaults, as upstream.
"""

import argparse
import sys
from pathlib import Path

import torch

from rope import apply_rotary_emb
from utils import REPO_ROOT, MissingAssetError, require_file


def rotate_test_input() -> tuple[torch.Tensor, torch.Tensor]:
    """The upstream test: apply_rotary_emb on its fixed input; returns the rotated (query, key).
    instructor/make_reference.py writes the reference from this too."""
    query = 2 * torch.ones(1, 2, 2, 4)  # (batch, seq_len, n_heads, head_dim)
    key = 3 * torch.ones(1, 2, 2, 4)  # (batch, seq_len, n_kv_heads, head_dim)
    return apply_rotary_emb(query, key, head_dim=4, max_seq_len=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=REPO_ROOT / "rotary_embedding_actual.data",
                        help="the reference (query, key) file (default: in the repository root)")
    args = parser.parse_args()
    try:
        reference = require_file(args.reference)
    except MissingAssetError as err:
        print(err, file=sys.stderr)
        return 1
    expected_query, expected_key = torch.load(reference, weights_only=True)
    actual_query, actual_key = rotate_test_input()

    ok = True
    for name, actual, expected in (("query", actual_query, expected_query), ("key", actual_key, expected_key)):
        if actual.shape != expected.shape or not torch.allclose(actual, expected):
            print(f"Rotary embedding test FAILED for the {name}:\nexpected\n{expected}\ngot\n{actual}",
                  file=sys.stderr)
            ok = False
    if not ok:
        return 1
    print("Rotary embedding test passed!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
