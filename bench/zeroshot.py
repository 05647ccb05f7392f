"""Zero-shot SST dev evaluation with SmolLM2-135M: our classifier against scoring every label
with its own full forward pass.

    python bench/zeroshot.py                     # CPU, a dev subset (--dev-examples 0: all 1101)
    python bench/zeroshot.py --device cuda --bf16
    python bench/zeroshot.py --quantize int8     # both methods on SmolLM2's int8 linear layers

Ours (LlamaZeroShotClassifier) runs each prompt once, keeps its keys and values, and scores all
labels' tokens on top of that cache. The baseline runs prompt + " " + label through the whole
model once per label. Both use the same length-sorted, masked batches and must agree.
"""

import argparse

import torch
import torch.nn.functional as F

import common
from classifier import LlamaZeroShotClassifier
from minllama.inference.quantize import prepare_for_inference
from minllama.training.data import collate, encode_examples, length_sorted_batches, read_examples


def label_by_label(classifier: LlamaZeroShotClassifier, input_ids, attention_mask) -> torch.Tensor:
    """(B, num_labels) log p(label | prompt), one full forward pass of prompt + label per label."""
    llama, batch_size, device = classifier.llama, input_ids.shape[0], input_ids.device
    lengths = attention_mask.sum(-1)
    rows = torch.arange(batch_size, device=device)[:, None]
    scores = []
    for label_ids in classifier.label_ids:
        label = torch.tensor(label_ids, device=device)
        # Write the label right after each row's last real token (rows are right-padded).
        width = input_ids.shape[1] + len(label)
        tokens = torch.full((batch_size, width), classifier.tokenizer.pad_id, dtype=input_ids.dtype, device=device)
        mask = torch.zeros(batch_size, width, dtype=attention_mask.dtype, device=device)
        tokens[:, :input_ids.shape[1]], mask[:, :input_ids.shape[1]] = input_ids, attention_mask
        positions = lengths[:, None] + torch.arange(len(label), device=device)  # (B, L): where the label's tokens go
        tokens[rows, positions], mask[rows, positions] = label, 1
        _, hidden = llama(tokens, attention_mask=mask)
        # The position before each label token predicts it.
        log_probs = F.log_softmax(llama.output(hidden[rows, positions - 1]).float(), dim=-1)  # (B, L, V)
        scores.append(log_probs.gather(-1, label.expand(batch_size, -1)[..., None]).sum((1, 2)))
    return torch.stack(scores, dim=1)


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--dev-examples", type=int, default=200, help="SST dev sentences (0: all 1101)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quantize", choices=("int8",), default=None, help="int8 linear layers (quantize.py)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the weights' dtype")
    args = parser.parse_args()
    device = common.setup(args)
    gguf, tokenizer, label_names, classifier = common.smollm2_zero_shot()
    prepare_for_inference(classifier.llama, args.dtype, args.quantize)
    classifier = classifier.to(device)
    examples = read_examples(common.find_asset("data/sst-dev.txt"), limit=args.dev_examples or None)
    room = classifier.llama.config.max_seq_len - classifier.max_label_len
    encoded = encode_examples(examples, tokenizer, room, classifier.question_ids, desc="dev")
    groups = length_sorted_batches([len(ids) for ids in encoded], args.batch_size)
    batches = [collate([encoded[i] for i in group], tokenizer.pad_id, device) for group in groups]
    labels = torch.tensor([examples[i].label for group in groups for i in group])  # in batch order

    def evaluate(score):
        with torch.inference_mode(), common.autocast(args, device):
            return torch.cat([score(input_ids, attention_mask) for input_ids, attention_mask in batches])

    candidates = {"ours (prompt once, labels on its KV cache)": lambda: evaluate(classifier),
                  "one full forward pass per label": lambda: evaluate(
                      lambda ids, mask: label_by_label(classifier, ids, mask))}
    ours, theirs = (fn() for fn in candidates.values())
    seconds = common.compare(candidates, device, args.repeats, warmup=0)
    rows = [[name, f"{value:.1f}", f"{len(encoded) / value:.1f}"] for name, value in seconds.items()]
    names = list(candidates)
    footer = ["ours vs one pass per label: " + common.verdict(seconds[names[1]] / seconds[names[0]], 5),
              f"same predictions: {(ours.argmax(-1) == theirs.argmax(-1)).float().mean():.1%}, "
              f"largest score difference {(ours - theirs).abs().max():.1e}",
              f"labels {label_names}: {[len(ids) for ids in classifier.label_ids]} tokens each",
              f"dev accuracy (ours): {(ours.argmax(-1).cpu() == labels).float().mean():.3f}",
              f"machine: {common.machine(device)}"]
    common.print_table(f"Zero-shot SST dev ({len(encoded)} sentences), SmolLM2-135M ({gguf.name}"
                       f"{', int8 linear layers' if args.quantize else ''}, {args.dtype}), batch {args.batch_size}, "
                       f"median of {args.repeats}", ["method", "seconds", "sentences/s"],
                       rows, footer)


if __name__ == "__main__":
    main()
