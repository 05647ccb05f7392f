"""K-shot and calibrated zero-shot prompting on SST dev with SmolLM2-135M (prompting.py), untrained.

    python bench/few_shot.py                                  # 200 dev sentences, K in 0 and 8, seeds 0-2
    python bench/few_shot.py --dev-examples 0 --shots 0,4,8 --seeds 3

For every K and seed the demonstrations are drawn (balanced over the labels) from sst-train;
each row reports accuracy without and with contextual calibration, and the seconds the
uncalibrated evaluation took (the demonstrations' prefix runs once per batch, on a shared KV cache).
"""

import argparse
import json
import statistics
import time

import torch

import common
import run_llama
from llama import load_pretrained
from minllama.methods.prompting import (CalibratedClassifier, PromptClassifier, PromptTemplate, build_prompt,
                                        content_free_queries, draw_demonstrations)
from tokenizer import Tokenizer


def accuracy(model, batches, gold, args, device) -> float:
    with torch.inference_mode(), common.autocast(args, device):
        scores = torch.cat([model(ids, mask) for ids, mask in batches])
    return (scores.argmax(-1).cpu() == gold).float().mean().item()


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--dev-examples", type=int, default=200, help="SST dev sentences (0: all 1101)")
    parser.add_argument("--shots", default="0,8", help="comma-separated K values")
    parser.add_argument("--seeds", type=int, default=3, help="demonstration draws per K > 0")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    device = common.setup(args)
    gguf = common.smollm2_path()
    tokenizer, llama = Tokenizer(tokenizer_model=gguf), load_pretrained(gguf).to(device)
    label_names = json.loads(common.find_asset("data/sst-label-mapping.json").read_text())
    train = [(e.label, e.sentence) for e in run_llama.read_examples(common.find_asset("data/sst-train.txt"))]
    dev = run_llama.read_examples(common.find_asset("data/sst-dev.txt"), limit=args.dev_examples or None)
    gold = torch.tensor([e.label for e in dev])
    template = PromptTemplate.question(label_names)

    rows = []
    for k in (int(word) for word in args.shots.split(",")):
        plain, calibrated, seconds = [], [], []
        for seed in range(args.seeds if k else 1):
            prompt = build_prompt(tokenizer, template, label_names, draw_demonstrations(train, len(label_names), k, seed))
            room = prompt.sentence_room(llama.config.max_seq_len)
            encoded = [prompt.query(tokenizer.encode(e.sentence, bos=False, eos=False)[:room]) for e in dev]
            order = run_llama.length_sorted_batches([len(ids) for ids in encoded], args.batch_size)
            batches = [run_llama.collate([encoded[i] for i in batch], tokenizer.pad_id, device) for batch in order]
            batch_gold = gold[[i for batch in order for i in batch]]
            model = PromptClassifier(llama, prompt).to(device).eval()
            start = time.perf_counter()
            plain.append(accuracy(model, batches, batch_gold, args, device))
            seconds.append(time.perf_counter() - start)
            with torch.inference_mode():
                calibrated_model = CalibratedClassifier(model, content_free_queries(tokenizer, prompt))
            calibrated.append(accuracy(calibrated_model, batches, batch_gold, args, device))
        spread = lambda xs: f"{statistics.mean(xs):.3f}" + (f" ({statistics.stdev(xs):.3f})" if len(xs) > 1 else "")  # noqa: E731
        rows.append([f"K = {k}", len(plain), spread(plain), spread(calibrated), f"{statistics.mean(seconds):.1f}"])
    common.print_table(f"SST dev ({len(dev)} sentences), SmolLM2-135M, untrained prompting",
                       ["demonstrations", "draws", "accuracy", "calibrated", "seconds"], rows,
                       [f"machine: {common.machine(device)}"])


if __name__ == "__main__":
    main()
