"""
WiSE-FT: weight-space ensembles of a zero-shot and a fine-tuned model (Wortsman et al. 2022,
"Robust fine-tuning of zero-shot models", https://arxiv.org/abs/2109.01903, Sec. 2).

Fine-tuning gains accuracy on the task's distribution and often loses the zero-shot model's
robustness elsewhere. WiSE-FT keeps both by averaging the two models' *weights*:

    theta(a) = (1 - a) * theta_0 + a * theta_1        a in [0, 1]

theta_0 the zero-shot model, theta_1 the fine-tuned one; the mixing coefficient a is chosen on dev.
This only makes sense when theta_0 is itself a working classifier with the same shape as theta_1,
so the linear head starts from the zero-shot classifier (`init_label_word_head`): row i of the head
is the output embedding of label i's first token, and the inputs end with the zero-shot question.
The head then computes the language model's logits of the label words at the last real token,
which is exactly what the zero-shot classifier compares, so a = 0 predicts what `--option prompt`
predicts (when every label is one token), and a = 1 is the fine-tuned model.

For LoRA, interpolating A and B separately is not interpolating the weights (a^2 B A, not a B A):
take theta_0 = theta_1 with every lora_B zeroed (`lora_zero_shot_state`), the same function as the
pretrained model; lora_A is then the same at both ends and W + s (a B) A is the weight-space line.
IA3's vectors are linear in the weights, so plain interpolation from ones is exact.
"""

import torch
import torch.nn as nn

from classifier import continuation_ids


def parse_alphas(spec: str) -> list[float]:
    """'0,0.25,0.5,0.75,1' -> [0.0, 0.25, ...]; every coefficient in [0, 1]."""
    try:
        alphas = [float(word) for word in spec.split(",")]
    except ValueError:
        raise ValueError(f"--wise_ft expects comma-separated numbers in [0, 1], got {spec!r}") from None
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]
    if bad:
        raise ValueError(f"--wise_ft coefficients must be in [0, 1], got {bad} in {spec!r}")
    return alphas


def interpolate_state_dicts(theta_0: dict[str, torch.Tensor], theta_1: dict[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * theta_0 + alpha * theta_1, tensor by tensor, over the same names and shapes.
    alpha 0 and 1 return exact copies of an end; tensors that are not floating point (counters,
    integer buffers) must agree and are copied."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the WiSE-FT coefficient must be in [0, 1], got {alpha}")
    if theta_0.keys() != theta_1.keys():
        raise ValueError(f"the two state dicts hold different tensors: only in theta_0 "
                         f"{sorted(theta_0.keys() - theta_1.keys())[:3]}, only in theta_1 "
                         f"{sorted(theta_1.keys() - theta_0.keys())[:3]}")
    mixed = {}
    for name, start in theta_0.items():
        end = theta_1[name]
        if start.shape != end.shape:
            raise ValueError(f"{name}: shape {tuple(start.shape)} in theta_0, {tuple(end.shape)} in theta_1")
        if not start.is_floating_point():
            if not torch.equal(start, end):
                raise ValueError(f"{name}: a non-floating tensor that differs between the ends cannot be mixed")
            mixed[name] = start.clone()
        elif alpha in (0.0, 1.0):
            mixed[name] = (start if alpha == 0.0 else end).detach().clone()
        else:
            mixed[name] = torch.lerp(start.detach(), end.detach().to(start.dtype), alpha)
    return mixed


def lora_zero_shot_state(theta_1: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """theta_0 for a LoRA model: theta_1 with every lora_B at zero (the adapters add nothing).
    The head is not touched: pass the head's initial values for it yourself."""
    return {name: torch.zeros_like(t) if name.endswith("lora_B") else t.detach().clone()
            for name, t in theta_1.items()}


def label_word_ids(tokenizer, label_names: list[str], question: str) -> list[int]:
    """Each label's first token as the continuation of the zero-shot question (" " + label)."""
    return [continuation_ids(tokenizer, question, " " + name)[0] for name in label_names]


def init_label_word_head(head: nn.Linear, output: nn.Linear, word_ids: list[int]) -> None:
    """--head_init label_words: head row i = the output embedding of word_ids[i], bias 0, so that
    head(h) = the language model's logits of the label words at hidden state h."""
    if head.weight.shape != (len(word_ids), output.weight.shape[1]):
        raise ValueError(f"a head of shape {tuple(head.weight.shape)} cannot hold {len(word_ids)} label "
                         f"words of dimension {output.weight.shape[1]}")
    if len(set(word_ids)) < len(word_ids):
        raise ValueError("two labels start with the same token: their label-word rows would be the same")
    with torch.no_grad():
        head.weight.copy_(output.weight[word_ids])
        if head.bias is not None:
            head.bias.zero_()


def load_into(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into the model's parameters of those names (all of them must exist)."""
    params = dict(model.named_parameters())
    unknown = sorted(state.keys() - params.keys())
    if unknown:
        raise ValueError(f"the model has no parameters named {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def wise_ft_sweep(model: nn.Module, theta_0: dict[str, torch.Tensor], theta_1: dict[str, torch.Tensor],
                  alphas: list[float], evaluate) -> tuple[float, dict[float, float]]:
    """Load theta(a) for each a into `model`, score it with evaluate(model) -> float (higher is
    better, e.g. dev accuracy), and leave the best one loaded (the earliest a on a tie, the one
    closest to zero-shot). Returns (best a, {a: score})."""
    scores = {}
    for alpha in alphas:
        load_into(model, interpolate_state_dicts(theta_0, theta_1, alpha))
        scores[alpha] = evaluate(model)
    best = max(scores, key=lambda a: (scores[a], -a))
    load_into(model, interpolate_state_dicts(theta_0, theta_1, best))
    return best, scores
