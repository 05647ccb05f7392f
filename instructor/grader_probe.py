"""The untrusted half of grade.py: compute one grader check's outputs with a submission's code.

    python -I grader_probe.py CHECK HARNESS_DIR CODE_DIR OUT.npz [--checkpoint PT] [--norm N] [--max-grad-norm X]

grade.py runs this in a child process with time and memory limits; the submission's modules are
imported here and only here. CHECK is `rope`, `optimizer` or `sanity`; the outputs go to OUT.npz
as plain arrays (no pickle), and grade.py compares them with the reference files, which this
process never sees. HARNESS_DIR holds the instructor's copies of the checks (so a submission's
edited rope_test.py changes nothing) and comes first on sys.path, CODE_DIR the submission.
"""

import argparse
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("check", choices=["rope", "optimizer", "sanity"])
    parser.add_argument("harness_dir")
    parser.add_argument("code_dir")
    parser.add_argument("out")
    parser.add_argument("--checkpoint")
    parser.add_argument("--norm", default="rmsnorm")
    parser.add_argument("--max-grad-norm", type=float, default=None)
    args = parser.parse_args()
    sys.path[:0] = [args.harness_dir, args.code_dir]

    import numpy as np

    if args.check == "rope":
        from rope_test import rotate_test_input
        query, key = rotate_test_input()
        outputs = {"query": query, "key": key}
    elif args.check == "optimizer":
        from optimizer_test import train_toy_model
        outputs = {"weight": train_toy_model(args.max_grad_norm)}
    else:
        from sanity_check import compute_outputs
        outputs = compute_outputs(args.checkpoint, args.norm)
    np.savez(args.out, **{name: tensor.detach().cpu().float().numpy() for name, tensor in outputs.items()})


if __name__ == "__main__":
    main()
