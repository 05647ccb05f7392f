"""Regenerate the grader reference files from the solution: `python instructor/make_reference.py`.

Writes, into --out (default: the repository root, where the checks read them):
  rotary_embedding_actual.data   rope_test.py's input rotated by rope.apply_rotary_emb: a (query, key) tuple
  optimizer_test.npy             optimizer_test.py's toy model trained without clipping, (2, 3) float32
  optimizer_test_clip0.9.npy     the same with max_grad_norm=0.9
and, with --checkpoint, the forward-pass reference of sanity_check.py for every --norm:
  sanity_check_{rmsnorm,layernorm}.data   {"logits": (2, 1, V), "hidden_states": (2, 8, dim)}

The procedures are the checks' own (rope_test.rotate_test_input, optimizer_test.train_toy_model,
sanity_check.compute_outputs), so a reference and its check cannot drift apart. With the course's stories42M.pt the RoPE and
optimizer files equal the upstream ones (tests/test_instructor.py says so); with any other
checkpoint the sanity files are references for that checkpoint, e.g. a small one for tests.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
ROPE_REFERENCE = "rotary_embedding_actual.data"

# The checks are imported where they are used: run as a script, main() first puts the repository
# root on sys.path.


def write_references(out: Path, checkpoint: Path | None = None, norms=()) -> list[Path]:
    """Write the reference files into `out`; returns their paths."""
    from optimizer_test import VARIANTS, train_toy_model
    from rope_test import rotate_test_input
    from sanity_check import REFERENCES, compute_outputs
    out.mkdir(parents=True, exist_ok=True)
    written = [out / ROPE_REFERENCE]
    torch.save(rotate_test_input(), written[0])
    for filename, max_grad_norm in VARIANTS.values():
        written.append(out / filename)
        np.save(written[-1], train_toy_model(max_grad_norm).numpy().astype(np.float32))
    for norm in norms:
        written.append(out / REFERENCES[norm])
        torch.save(compute_outputs(checkpoint, norm), written[-1])
    return written


def main() -> int:
    sys.path.insert(0, str(REPO_ROOT))
    from sanity_check import REFERENCES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="folder to write into (default: the repository root)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="also write the sanity-check reference of this checkpoint (e.g. stories42M.pt)")
    parser.add_argument("--norm", choices=[*REFERENCES, "both"], default="both",
                        help="which sanity-check reference(s) to write with --checkpoint (default: both)")
    args = parser.parse_args()
    if args.checkpoint is not None and not args.checkpoint.is_file():
        print(f"make_reference: checkpoint {args.checkpoint} not found", file=sys.stderr)
        return 1
    norms = () if args.checkpoint is None else list(REFERENCES) if args.norm == "both" else [args.norm]
    for path in write_references(args.out, args.checkpoint, norms):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
