"""Grader check for the whole model: `python sanity_check.py [--norm layernorm]`.

Loads stories42M.pt with llama.load_pretrained, runs the upstream sanity batch through
`logits, hidden_states = model(tokens)` (no targets: logits for the last position only)
and compares both with the course's reference outputs, at atol=1e-5, rtol=1e-3.

The batch is two rows of 8 token ids, the first right-padded with id 0. There is no
attention mask, exactly as upstream, so the pad positions are ordinary tokens and their
hidden states are part of the reference. The checkpoint was trained with RMSNorm; the
2025 CMU variant of the assignment asks for LayerNorm instead and has its own reference.
"""

import argparse
import sys
from pathlib import Path

import torch

from llama import load_pretrained
from support import course
from utils import REPO_ROOT, MissingAssetError, require_file

SANITY_TOKENS = [[101, 7592, 2088, 102, 0, 0, 0, 0],
                 [101, 7592, 15756, 2897, 2005, 17953, 2361, 102]]
CHECKPOINT_HINT = ("download https://www.cs.cmu.edu/~vijayv/stories42M.pt into the repository root, "
                   "or run `bash setup.sh`")
# The norm each reference file was made with, for the courses of this copy (course.py).
REFERENCES = {c.norm: c.reference_file(course.SANITY_REFERENCE) for c in course.here()}
DEFAULT_NORM = "rmsnorm" if "rmsnorm" in REFERENCES else course.default().norm  # stories42M's own norm


class SanityInputError(ValueError):
    """The checkpoint cannot read the sanity batch (its vocabulary is too small)."""


@torch.no_grad()
def compute_outputs(checkpoint: Path, norm_type: str) -> dict[str, torch.Tensor]:
    """The model's {"logits": (2, 1, V), "hidden_states": (2, 8, dim)} on the sanity batch."""
    torch.manual_seed(1337)  # as upstream; in eval mode nothing should depend on it
    model = load_pretrained(checkpoint, norm_type=norm_type)
    largest_id = max(max(row) for row in SANITY_TOKENS)
    if model.config.vocab_size <= largest_id:
        raise SanityInputError(
            f"{checkpoint} has a vocabulary of {model.config.vocab_size} tokens, but the sanity input uses "
            f"token ids up to {largest_id} (Llama 2's 32000-token vocabulary): this check needs a model "
            "with that vocabulary, e.g. stories42M.pt")
    logits, hidden_states = model(torch.tensor(SANITY_TOKENS))
    return {"logits": logits, "hidden_states": hidden_states}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--norm", choices=list(REFERENCES), default=DEFAULT_NORM,
                        help=f"the normalisation the model uses (default: {DEFAULT_NORM})")
    parser.add_argument("--checkpoint", type=Path, default=REPO_ROOT / "stories42M.pt",
                        help="the model to check (default: stories42M.pt in the repository root)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="the reference outputs (default: the file for --norm in the repository root)")
    args = parser.parse_args()
    try:
        checkpoint = require_file(args.checkpoint, CHECKPOINT_HINT)
        reference = require_file(args.reference or REPO_ROOT / REFERENCES[args.norm])
    except MissingAssetError as err:
        print(err, file=sys.stderr)
        return 1

    expected = torch.load(reference, weights_only=True)
    try:
        actual = compute_outputs(checkpoint, args.norm)
    except SanityInputError as err:
        print(f"Sanity check cannot run: {err}", file=sys.stderr)
        return 1
    ok = True
    for name in ("logits", "hidden_states"):
        if actual[name].shape != expected[name].shape:
            print(f"{name}: expected shape {tuple(expected[name].shape)}, got {tuple(actual[name].shape)}",
                  file=sys.stderr)
            ok = False
        elif not torch.allclose(actual[name], expected[name], atol=1e-5, rtol=1e-3):
            difference = (actual[name] - expected[name]).abs().max().item()
            print(f"{name} differ from the reference {reference}: max abs difference {difference:.3g}",
                  file=sys.stderr)
            ok = False
    if not ok:
        print(f"Sanity check FAILED (norm {args.norm}, checkpoint {checkpoint})", file=sys.stderr)
        return 1
    print("Your Llama implementation is correct!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
