"""The untrusted half of grade.py: compute one grader check's outputs with a submission's code.

    python -I grader_probe.py CHECK HARNESS_DIR CODE_DIR DRAWN.npz OUT.npz
                              [--checkpoint PT] [--norm N] [--max-grad-norm X] [--drawn-only]

grade.py runs this in a sandbox (sandbox.py) with time and memory limits; the submission's
modules are imported here and only here. CHECK is `rope`, `optimizer` or `sanity`. The outputs
on the upstream input (rope_test.py, optimizer_test.py, sanity_check.py) and on the inputs drawn
for this run (DRAWN.npz, see drawn_inputs.py; keys prefixed `drawn_`) go to OUT.npz as plain
arrays (no pickle), and grade.py compares them with the expected ones, which this process never
sees. HARNESS_DIR holds the instructor's copies of the checks (so a submission's edited
rope_test.py changes nothing) and comes first on sys.path, CODE_DIR the submission.
`--drawn-only` skips the upstream input (a checkpoint whose vocabulary cannot take it).
"""

import argparse
import sys


def upstream_outputs(args) -> dict:
    """The outputs on the upstream check's own input, by the instructor's copy of the check."""
    if args.check == "rope":
        from rope_test import rotate_test_input
        return dict(zip(("query", "key"), rotate_test_input()))
    if args.check == "optimizer":
        from optimizer_test import train_toy_model
        return {"weight": train_toy_model(args.max_grad_norm)}
    from sanity_check import compute_outputs
    return compute_outputs(args.checkpoint, args.norm)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("check", choices=["rope", "optimizer", "sanity"])
    parser.add_argument("harness_dir")
    parser.add_argument("code_dir")
    parser.add_argument("drawn")
    parser.add_argument("out")
    parser.add_argument("--checkpoint")
    parser.add_argument("--norm", default="rmsnorm")
    parser.add_argument("--max-grad-norm", type=float, default=None)
    parser.add_argument("--drawn-only", action="store_true")
    args = parser.parse_args()
    sys.path[:0] = [args.harness_dir, args.code_dir]

    import numpy as np

    from drawn_inputs import PREFIX, compute

    outputs = {} if args.drawn_only else upstream_outputs(args)
    with np.load(args.drawn, allow_pickle=False) as drawn:
        on_drawn = compute(args.check, dict(drawn), args.checkpoint, args.norm)
    outputs.update({PREFIX + name: tensor for name, tensor in on_drawn.items()})
    np.savez(args.out, **{name: tensor.detach().cpu().float().numpy() for name, tensor in outputs.items()})


if __name__ == "__main__":
    main()
