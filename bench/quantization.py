"""Smaller weights (quantize.py) on SmolLM2-135M: decoding speed and what it costs in quality.

    python bench/quantization.py                    # CPU: float32, int8 and int4 linear layers, bfloat16 weights
    python bench/quantization.py --dev-examples 0   # quality on all 1101 SST dev sentences

For each variant of the same loaded model: greedy decoding at batch 1 (tokens/s, alternating
the variants within this process), through Llama.generate and through fast_decode.py, the
perplexity of the SST dev sentences (each scored as a text of its own, the first token
unscored), zero-shot SST dev accuracy with LlamaZeroShotClassifier, and the full dev set's
zero-shot time. SmolLM2's float32 weights are themselves a dequantised 4-bit file (Q4_1), so
4-bit re-quantisation of them is nearly lossless by construction: the perplexity is measured
also on stories260K, whose weights are genuinely float, on 32 texts of 128 tokens sampled from
its float32 model (it comes without its tokenizer). Targets: int8 at least 1.5x float32's
decoding speed; perplexity within 1% (int8) and 3% (int4) of float32's; accuracy within 0.01.
bench/llamacpp.py puts the same speeds beside llama.cpp's.
"""

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F

import common
from minllama.inference import fast_decode
from minllama.inference.quantize import prepare_for_inference
from minllama.training.data import collate, encode_examples, length_sorted_batches, read_examples

VARIANTS = {"float32": dict(), "int8 linear layers": dict(quantize="int8"), "int4 linear layers": dict(quantize="int4"),
            "bfloat16 weights": dict(dtype="bfloat16")}
PERPLEXITY_TOLERANCE = {"int8 linear layers": 0.01, "int4 linear layers": 0.03}


@torch.inference_mode()
def perplexity(model, batches) -> float:
    """exp(mean negative log-likelihood per predicted token) over right-padded (ids, mask) batches."""
    total, count = 0.0, 0
    for input_ids, attention_mask in batches:
        logits, _ = model(input_ids, targets=input_ids, attention_mask=attention_mask)
        targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)  # pads are not predicted
        total += F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(),
                                 ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
    return math.exp(total / count)


@torch.inference_mode()
def zero_shot_accuracy(classifier, batches, labels) -> float:
    predictions = torch.cat([classifier(ids, mask).argmax(-1) for ids, mask in batches])
    return (predictions.cpu() == labels).float().mean().item()


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dev-examples", type=int, default=200, help="SST dev sentences for quality (0: all 1101)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--compile", action="store_true",
                        help="also time the fast path through torch.compile, float32 and int8 (needs a C++ compiler)")
    args = parser.parse_args()
    device = common.setup(args)
    gguf, tokenizer, label_names, base = common.smollm2_zero_shot()
    classifiers = {name: copy.deepcopy(base) for name in VARIANTS}
    for name, settings in VARIANTS.items():
        prepare_for_inference(classifiers[name].llama, **settings)
        classifiers[name].to(device)

    examples = read_examples(common.find_asset("data/sst-dev.txt"), limit=args.dev_examples or None)
    room = base.llama.config.max_seq_len - base.max_label_len

    def batched(sequences):
        groups = length_sorted_batches([len(ids) for ids in sequences], args.batch_size)
        return groups, [collate([sequences[i] for i in group], tokenizer.pad_id, device) for group in groups]

    _, text_batches = batched([tokenizer.encode(e.sentence, bos=True, eos=False) for e in examples])
    groups, prompt_batches = batched(encode_examples(examples, tokenizer, room, base.question_ids))
    labels = torch.tensor([examples[i].label for group in groups for i in group])

    prompt = torch.tensor([tokenizer.encode("Once upon a time, there was a little robot who", bos=True, eos=False)],
                          device=device)
    decoded = {name: classifier.llama.generate(prompt, args.new_tokens, temperature=0.0)
               for name, classifier in classifiers.items()}
    steps = {name: fast_decode.DecodingStep(c.llama) for name, c in classifiers.items()}
    fast = {name: (lambda c=c, step=steps[name]: fast_decode.generate(c.llama, prompt, args.new_tokens,
                                                                        temperature=0.0, step=step))
            for name, c in classifiers.items()}
    fast_same = {name: (fast[name]() == decoded[name]).float().mean().item() for name in VARIANTS}
    candidates = {name: (lambda c=c: c.llama.generate(prompt, args.new_tokens, temperature=0.0))
                  for name, c in classifiers.items()}
    candidates.update({f"{name}, fast path": fn for name, fn in fast.items()})
    compiled = ("float32", "int8 linear layers", "int4 linear layers") if args.compile else ()
    for name in compiled:  # the first call compiles: untimed (compare warms up)
        step = fast_decode.DecodingStep(classifiers[name].llama, compile=True)
        candidates[f"{name}, compiled"] = lambda c=classifiers[name], step=step: fast_decode.generate(
            c.llama, prompt, args.new_tokens, temperature=0.0, step=step)
    seconds = common.compare(candidates, device, args.repeats)
    quality, zero_shot_seconds = {}, {}
    for name, c in classifiers.items():
        start = time.perf_counter()
        accuracy = zero_shot_accuracy(c, prompt_batches, labels)
        zero_shot_seconds[name] = time.perf_counter() - start
        quality[name] = (perplexity(c.llama, text_batches), accuracy)
    genuine = genuine_float_perplexities(device)

    rate = {name: args.new_tokens / value for name, value in seconds.items()}
    reference_ppl, reference_acc = quality["float32"]
    rows = []
    for name in VARIANTS:
        ppl, acc = quality[name]
        same = (decoded[name] == decoded["float32"]).float().mean().item()
        fast_rate = rate[f"{name}, fast path"]
        rows.append([name, f"{rate[name]:.1f}", f"{rate[name] / rate['float32']:.2f}x", f"{fast_rate:.1f}",
                     f"{fast_rate / rate['float32, fast path']:.2f}x", f"{ppl:.3f}",
                     f"{ppl / reference_ppl - 1:+.2%}", f"{genuine[name] / genuine['float32'] - 1:+.2%}",
                     f"{acc:.3f}", f"{acc - reference_acc:+.3f}", f"{zero_shot_seconds[name]:.1f}", f"{same:.0%}"])
    footer = ["int8 vs float32 decoding: " + common.verdict(rate["int8 linear layers"] / rate["float32"], 1.5),
              "int8 vs float32 decoding, fast path: "
              + common.verdict(rate["int8 linear layers, fast path"] / rate["float32, fast path"], 1.5)
              + f"; fast path float32 vs Llama.generate float32: {rate['float32, fast path'] / rate['float32']:.2f}x",
              "fast path tokens equal to Llama.generate's: "
              + ", ".join(f"{name} {share:.0%}" for name, share in fast_same.items())
              + " (float32 and int8 must be 100%; bf16 sums, and int4 ones of a fused matrix, round in another "
              "order, which can flip a near-tie)",
              *(f"{name}, fast path through torch.compile: {rate[f'{name}, compiled']:.1f} tok/s, "
                f"{rate[f'{name}, compiled'] / rate['float32']:.2f}x Llama.generate float32" for name in compiled)]
    for name, tolerance in PERPLEXITY_TOLERANCE.items():
        changes = (quality[name][0] / reference_ppl - 1, genuine[name] / genuine["float32"] - 1)
        footer.append(f"{name}: perplexity within {tolerance:.0%} of float32 on SmolLM2 and stories260K: "
                      f"{'met' if max(map(abs, changes)) <= tolerance else 'MISSED'}; zero-shot accuracy within "
                      f"0.01: {'met' if abs(quality[name][1] - reference_acc) <= 0.01 else 'MISSED'}")
    footer += [f"quality on {len(examples)} SST dev sentences (zero-shot s: their time); stories260K: perplexity "
               "of its float32 model's samples; 'same tokens': share of the "
               f"{args.new_tokens} greedy tokens equal to float32's", f"machine: {common.machine(device)}"]
    common.print_table(f"SmolLM2-135M ({gguf.name}), greedy decoding at batch 1 ({args.new_tokens} tokens, median "
                       f"of {args.repeats}) and quality", ["weights", "tokens/s", "speed", "fast tok/s", "fast speed",
                                                           "perplexity", "vs f32", "260K vs f32",
                                                           "zero-shot acc", "vs f32", "zero-shot s", "same tokens"],
                       rows, footer)


@torch.inference_mode()
def genuine_float_perplexities(device, texts: int = 32, length: int = 128) -> dict[str, float]:
    """{variant: perplexity} of stories260K (float weights, unlike SmolLM2's) on texts sampled
    from its float32 model at temperature 1 (seeded): how much each variant's predictions drift."""
    from llama import load_pretrained

    model = load_pretrained(common.find_asset("stories260K.bin")).to(device)
    torch.manual_seed(0)
    bos = torch.ones(texts, 1, dtype=torch.long, device=device)  # llama2.c's BOS id
    samples = model.generate(bos, length - 1, temperature=1.0, epsilon=0.0)
    batches = [(samples, torch.ones_like(samples))]
    return {name: perplexity(prepare_for_inference(copy.deepcopy(model), **settings), batches)
            for name, settings in VARIANTS.items()}


if __name__ == "__main__":
    main()
