"""The grader checks once more, on inputs drawn at grading time.

The upstream reference files hold fixed inputs with fixed answers, and they ship in every
student repository: a submission can pass them by loading or memorising the answer instead of
computing it. So grade.py also draws new inputs for each run (from a seed that goes into the
reports and nowhere else), computes the expected outputs with the solution's own code, and asks
the submission for the same outputs. A submission must match both.

Both sides call `compute` below: grade.py with the solution's modules first on sys.path,
grader_probe.py (in the sandbox) with the submission's. The inputs travel as plain arrays (.npz),
so the drawing, which uses nothing but numpy, happens once, outside the sandbox.
"""

import numpy as np
import torch

PREFIX = "drawn_"  # the outputs on drawn inputs, next to the upstream ones in one .npz


def draw(check: str, seed: int, max_grad_norm: float | None = None, vocab_size: int = 32000,
         max_seq_len: int = 64) -> dict[str, np.ndarray]:
    """The inputs of `check` for this run: the same seed gives the same inputs."""
    rng = np.random.default_rng([seed, ["rope", "optimizer", "sanity"].index(check)])
    if check == "rope":
        # Shapes unlike the upstream (1, 2, 2, 4), grouped-query heads, and a theta that is used.
        n_kv_heads = int(rng.integers(1, 3))
        n_heads, head_dim = n_kv_heads * int(rng.integers(1, 3)), 2 * int(rng.integers(2, 9))
        batch, seq_len = int(rng.integers(1, 4)), int(rng.integers(3, 17))
        return {"query": rng.standard_normal((batch, seq_len, n_heads, head_dim), dtype=np.float32),
                "key": rng.standard_normal((batch, seq_len, n_kv_heads, head_dim), dtype=np.float32),
                "head_dim": np.array(head_dim), "max_seq_len": np.array(seq_len + int(rng.integers(0, 16))),
                "theta": np.array(rng.choice([10000.0, 100000.0, 500000.0]))}
    if check == "optimizer":
        # A random linear least-squares problem, a random start and hyper-parameters near the
        # upstream test's (lr 1e-3, weight decay 1e-4), so correct variants of the formula pass.
        steps, n_out, n_in = 200, int(rng.integers(1, 4)), int(rng.integers(2, 6))
        x = rng.uniform(-1, 1, (steps, n_in)).astype(np.float32)
        inputs = {"initial_weight": rng.standard_normal((n_out, n_in), dtype=np.float32),
                  "x": x, "y": x @ rng.standard_normal((n_in, n_out), dtype=np.float32),
                  "lr": np.array(10 ** rng.uniform(-3.3, -2.3)), "weight_decay": np.array(10 ** rng.uniform(-5, -2)),
                  "betas": np.array([rng.uniform(0.8, 0.95), rng.uniform(0.99, 0.9995)])}
        if max_grad_norm is not None:  # the course clips: a threshold the early gradients exceed
            inputs["max_grad_norm"] = np.array(rng.uniform(0.3, 1.0))
        return inputs
    batch, seq_len = int(rng.integers(2, 4)), int(rng.integers(4, min(24, max_seq_len) + 1))
    return {"tokens": rng.integers(0, vocab_size, (batch, seq_len))}


@torch.no_grad()
def _forward(tokens: torch.Tensor, checkpoint: str, norm: str) -> dict[str, torch.Tensor]:
    from llama import load_pretrained
    logits, hidden_states = load_pretrained(checkpoint, norm_type=norm)(tokens)
    return {"logits": logits, "hidden_states": hidden_states}


def compute(check: str, inputs: dict[str, np.ndarray], checkpoint: str | None = None,
            norm: str = "rmsnorm") -> dict[str, torch.Tensor]:
    """The outputs of `check` on `inputs`, by whichever rope, optimizer and llama modules import."""
    if check == "rope":
        from rope import apply_rotary_emb
        query, key = apply_rotary_emb(torch.from_numpy(inputs["query"]), torch.from_numpy(inputs["key"]),
                                      head_dim=int(inputs["head_dim"]), max_seq_len=int(inputs["max_seq_len"]),
                                      theta=float(inputs["theta"]))
        return {"query": query, "key": key}
    if check == "optimizer":
        from optimizer import AdamW
        weight = torch.nn.Parameter(torch.from_numpy(inputs["initial_weight"]).clone())
        clipping = {"max_grad_norm": float(inputs["max_grad_norm"])} if "max_grad_norm" in inputs else {}
        opt = AdamW([weight], lr=float(inputs["lr"]), betas=tuple(map(float, inputs["betas"])),
                    weight_decay=float(inputs["weight_decay"]), correct_bias=True, **clipping)
        for x, y in zip(torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["y"])):
            opt.zero_grad()
            loss = ((y - weight @ x) ** 2).sum()
            loss.backward()
            opt.step()
        return {"weight": weight.detach()}
    return _forward(torch.from_numpy(inputs["tokens"]), checkpoint, norm)
