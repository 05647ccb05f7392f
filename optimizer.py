"""AdamW: Adam with decoupled weight decay.

Adam (Kingma & Ba 2015, Algorithm 1) keeps two running averages per parameter: the
first moment m (a momentum: the mean of recent gradients) and the second moment v (the
mean of recent squared gradients). The update m / sqrt(v) moves every coordinate by
about the learning rate, whatever the scale of its gradient.

Both averages start at zero, so early on they are biased towards zero: after t steps
m is (1 - beta1^t) times too small on average, v is (1 - beta2^t) times too small
(Kingma & Ba 2015, Sec. 3). Dividing them by those factors removes the bias; folding
both corrections into the step size gives lr * sqrt(1 - beta2^t) / (1 - beta1^t)
(the efficient form at the end of Kingma & Ba 2015, Sec. 2).

Weight decay the Adam way (an L2 term added to the gradient) gets divided by sqrt(v)
like the rest of the gradient, so weights with large gradients are barely decayed.
AdamW (Loshchilov & Hutter 2019, Algorithm 2, line 12) decouples it: the weights are
shrunk directly, p <- p - lr * weight_decay * p, outside the adaptive update. (Line 12
shrinks the weights from before the Adam step; like the course's reference solution we
shrink the updated ones. The two differ by a factor 1 - lr * weight_decay on the Adam
step, small but visible in the reference values of optimizer_test.py.)

Optionally each parameter group's gradients are first clipped to a global L2 norm of
at most `max_grad_norm`, as torch.nn.utils.clip_grad_norm_ does (the 2025 CMU variant
of the assignment).

There is no learning-rate schedule in here: that is the training loop's business.
"""

from typing import Callable, Iterable

import torch


def _check_hyperparameters(group: dict) -> None:
    """Reject values that would silently train nonsense (or blow up much later)."""
    if not group["lr"] >= 0.0:
        raise ValueError(f"invalid learning rate {group['lr']}: must be >= 0")
    beta1, beta2 = group["betas"]
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"invalid beta1 {beta1}: must be in [0, 1)")
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"invalid beta2 {beta2}: must be in [0, 1)")
    if not group["eps"] >= 0.0:
        raise ValueError(f"invalid eps {group['eps']}: must be >= 0")
    if not group["weight_decay"] >= 0.0:
        raise ValueError(f"invalid weight_decay {group['weight_decay']}: must be >= 0")
    max_grad_norm = group["max_grad_norm"]
    if max_grad_norm is not None and not max_grad_norm > 0.0:
        raise ValueError(f"invalid max_grad_norm {max_grad_norm}: must be > 0, or None for no clipping")


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (see above). Every hyper-parameter can be set per
    parameter group, as in any torch.optim optimizer.

    `max_grad_norm` (None: off) clips each group's gradients before the update (see above)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        max_grad_norm: float | None = None,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        correct_bias=correct_bias, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        # Every group is checked, including groups that bring their own hyper-parameters.
        _check_hyperparameters({**self.defaults, **param_group})
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Update every parameter that has a gradient, one parameter group at a time.

        For each parameter p with gradient g, at step t (counted per parameter, from 1):
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t)   (just lr if not correct_bias)
            p = p - step_size * m / (sqrt(v) + eps)
            p = p - lr * weight_decay * p

        If the group sets `max_grad_norm`, its gradients are first scaled together so that
        their global L2 norm is at most max_grad_norm.

        `closure`, if given, re-evaluates the model and returns the loss, which is returned.
        """
        # BEGIN SOLUTION
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"AdamW does not support sparse gradients (parameter of shape "
                                       f"{tuple(p.shape)}); use torch.optim.SparseAdam for those")
            if not params:
                continue

            if group["max_grad_norm"] is not None:
                # One norm over all the group's gradients together, so clipping rescales the
                # whole update direction without changing it. The factor stays a tensor: no
                # GPU -> CPU synchronisation. The 1e-6 is clip_grad_norm_'s guard against 0/0.
                device = params[0].grad.device
                norms = torch.stack([torch.linalg.vector_norm(p.grad).to(device) for p in params])
                total_norm = torch.linalg.vector_norm(norms)
                clip_coef = (group["max_grad_norm"] / (total_norm + 1e-6)).clamp(max=1.0)
                for p in params:
                    p.grad.mul_(clip_coef.to(p.grad.device))

            lr = group["lr"]
            beta1, beta2 = group["betas"]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad

                # Running averages of the gradient and of its square (Algorithm 2, lines 7-8).
                m.mul_(beta1).add_(g, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)

                # Bias correction folded into the step size (Kingma & Ba 2015, end of Sec. 2).
                step_size = lr
                if group["correct_bias"]:
                    step_size = lr * (1.0 - beta2 ** t) ** 0.5 / (1.0 - beta1 ** t)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size)

                # Decoupled weight decay, applied to the freshly updated weights (line 12).
                # Not p.mul_(1 - lr*wd): in float32, 1 - 1e-7 rounds to 1 - 1.19e-7, a 19% error.
                if group["weight_decay"] != 0.0:
                    p.add_(p, alpha=-lr * group["weight_decay"])
        return loss
        # END SOLUTION
