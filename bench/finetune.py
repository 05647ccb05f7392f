"""Fine-tuning speed at the upstream SST command's settings (batch 80, lr 2e-5, AdamW).

    python bench/finetune.py                    # CPU, stories42M shape, random weights
    python bench/finetune.py --device cuda --bf16

1. One training step (forward + backward + AdamW) on a batch of 80 sequences of 32 tokens:
   our LlamaEmbeddingClassifier against transformers' LlamaForCausalLM (language-modelling
   loss over the whole vocabulary) and LlamaForSequenceClassification (a linear head on the
   last token, like ours), same weights, all with optimizer.AdamW.
2. An epoch on SST (a subset by default; --train-examples 0 for all of it) and the dev-set
   evaluation after it: run_llama.py's pipeline (length-bucketed batches, attention mask)
   against a transformers loop over shuffled batches padded to their longest row.
"""

import argparse
import math
import random
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import common
from minllama.classify.classification import epoch_batches
from minllama.training.supervised import predict
from minllama.training import loop as training
from minllama.training.data import collate, encode_examples, length_sorted_batches, padding_fraction, read_examples
from minllama.training.objectives import ClassificationLoss
from optimizer import AdamW
from tokenizer import Tokenizer


def transformers_classifier(model, num_labels: int, pad_id: int, device):
    """LlamaForSequenceClassification with `model`'s backbone weights and a fresh head."""
    from transformers import LlamaForSequenceClassification

    causal = common.to_transformers(model)
    causal.config.num_labels, causal.config.pad_token_id = num_labels, pad_id
    classifier = LlamaForSequenceClassification(causal.config)
    classifier.model.load_state_dict(causal.model.state_dict())
    return classifier.to(device)


def training_step(model, optimizer, loss_fn, args, device):
    def step():
        with common.autocast(args, device):
            loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def step_benchmark(model, tokenizer, folder, args, device):
    torch.manual_seed(2)
    batch = torch.randint(4, model.config.vocab_size, (args.batch_size, args.seq_len), device=device)
    batch[:, 0] = tokenizer.bos_id
    labels = torch.randint(0, 5, (args.batch_size,), device=device)

    ours = common.our_classifier(model, folder, 5, device).train()
    candidates = {"ours (LlamaEmbeddingClassifier)": training_step(
        ours, AdamW(ours.parameters(), lr=args.lr), lambda: F.nll_loss(ours(batch), labels), args, device)}
    if not args.no_transformers:
        causal = common.to_transformers(model).to(device).train()
        sequence = transformers_classifier(model, 5, tokenizer.pad_id, device).train()
        candidates["transformers LlamaForCausalLM (LM loss)"] = training_step(
            causal, AdamW(causal.parameters(), lr=args.lr), lambda: causal(batch, labels=batch).loss, args, device)
        candidates["transformers LlamaForSequenceClassification"] = training_step(
            sequence, AdamW(sequence.parameters(), lr=args.lr), lambda: sequence(batch, labels=labels).loss,
            args, device)
    seconds = common.compare(candidates, device, args.repeats)
    n_tokens = args.batch_size * args.seq_len
    rows = [[name, f"{seconds[name]:.2f}", f"{n_tokens / seconds[name]:.0f}"] for name in candidates]
    footer = []
    for name in list(candidates)[1:]:
        footer.append(f"ours vs {name}: " + common.verdict(seconds[name] / seconds[list(candidates)[0]], 1.5))
    common.print_table(f"One training step (forward + backward + optimizer.AdamW), batch {args.batch_size} x "
                       f"{args.seq_len} tokens, median of {args.repeats}",
                       ["model", "seconds/step", "tokens/s"], rows, footer)


def naive_batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches, each padded to its longest row: what a plain DataLoader does."""
    order = list(range(n))
    rng.shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def ours_epoch(model, train, dev, args, device, folder):
    """run_llama.py's pieces: one epoch of the training loop (length-bucketed batches), predict on dev."""
    classifier = common.our_classifier(model, folder, args.num_labels, device)
    steps = math.ceil(len(train["ids"]) / args.batch_size)
    batch_at = epoch_batches(train["ids"], train["labels"], args.batch_size, args.pad_id, device, args.seed)
    training.train(classifier, ClassificationLoss(), batch_at, training.LoopSettings(max_steps=steps, lr=args.lr),
                   training.RunHooks(), device)
    predictions = predict(classifier, dev["ids"], args.batch_size, args.pad_id, device, "dev")
    return (predictions.argmax(-1) == torch.tensor(dev["labels"])).float().mean().item()


def transformers_epoch(model, train, dev, args, device):
    """The plain transformers loop: shuffled batches padded to their longest row, then dev in order."""
    classifier = transformers_classifier(model, args.num_labels, args.pad_id, device)
    optimizer = AdamW(classifier.parameters(), lr=args.lr)
    classifier.train()
    for batch in naive_batches(len(train["ids"]), args.batch_size, random.Random(args.seed)):
        input_ids, attention_mask = collate([train["ids"][i] for i in batch], args.pad_id, device)
        labels = torch.tensor([train["labels"][i] for i in batch], device=device)
        with common.autocast(args, device):
            loss = classifier(input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    classifier.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(dev["ids"]), args.batch_size):
            rows = range(start, min(start + args.batch_size, len(dev["ids"])))
            input_ids, attention_mask = collate([dev["ids"][i] for i in rows], args.pad_id, device)
            with common.autocast(args, device):
                logits = classifier(input_ids, attention_mask=attention_mask).logits
            correct += (logits.argmax(-1).cpu() == torch.tensor([dev["labels"][i] for i in rows])).sum().item()
    return correct / len(dev["ids"])


def load_split(name: str, tokenizer, limit: int) -> dict:
    examples = read_examples(common.find_asset(f"data/sst-{name}.txt"), limit=limit or None)
    ids = encode_examples(examples, tokenizer, 1024, desc=name)
    return {"ids": ids, "labels": [example.label for example in examples]}


def epoch_benchmark(model, tokenizer, folder, args, device):
    train = load_split("train", tokenizer, args.train_examples)
    dev = load_split("dev", tokenizer, args.dev_examples)
    args.num_labels, args.pad_id = 5, tokenizer.pad_id

    lengths = [len(ids) for ids in train["ids"]]
    rng = random.Random(args.seed)
    naive = padding_fraction(lengths, naive_batches(len(lengths), args.batch_size, rng))
    bucketed = padding_fraction(lengths, length_sorted_batches(lengths, args.batch_size, rng))
    dev_lengths = [len(ids) for ids in dev["ids"]]
    dev_naive = padding_fraction(dev_lengths, naive_batches(len(dev_lengths), args.batch_size, rng))
    dev_sorted = padding_fraction(dev_lengths, length_sorted_batches(dev_lengths, args.batch_size))

    accuracy, seconds = {}, {}
    seconds["ours (run_llama.py pipeline)"] = common.time_once(
        lambda: accuracy.update(ours=ours_epoch(model, train, dev, args, device, folder)), device)
    if not args.no_transformers:
        seconds["transformers, naive padding"] = common.time_once(
            lambda: accuracy.update(transformers=transformers_epoch(model, train, dev, args, device)), device)
    rows = [[name, f"{value:.1f}", f"{sum(lengths) / value:.0f}"] for name, value in seconds.items()]
    footer = [f"SST train tokens per sentence (BOS included): mean {sum(lengths) / len(lengths):.1f}, "
              f"max {max(lengths)}",
              f"padding share of train positions: naive {naive:.1%}, length-bucketed {bucketed:.1%}",
              f"padding share of dev positions: naive {dev_naive:.1%}, length-sorted {dev_sorted:.1%}",
              "dev accuracy (random weights, so only a sign that it ran): "
              + ", ".join(f"{name} {value:.3f}" for name, value in accuracy.items())]
    if len(seconds) == 2:
        footer.insert(0, "ours vs transformers, epoch wall time: "
                      + common.verdict(seconds["transformers, naive padding"] / seconds["ours (run_llama.py pipeline)"], 1.5))
    common.print_table(f"One epoch on {len(lengths)} SST train sentences + evaluation of {len(dev_lengths)} dev "
                       f"sentences, batch {args.batch_size} (one run each)",
                       ["pipeline", "seconds", "train tokens/s"], rows, footer)


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--batch-size", type=int, default=80)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--train-examples", type=int, default=800, help="SST train sentences (0: all 8544)")
    parser.add_argument("--dev-examples", type=int, default=400, help="SST dev sentences (0: all 1101)")
    parser.add_argument("--skip-step", action="store_true", help="only the epoch benchmark")
    parser.add_argument("--skip-epoch", action="store_true", help="only the step benchmark")
    parser.add_argument("--no-transformers", action="store_true", help="time ours only")
    args = parser.parse_args()
    device = common.setup(args)
    tokenizer = Tokenizer(tokenizer_model=common.find_asset("tokenizer.model"))
    model = common.random_model(common.stories42m_config())
    with tempfile.TemporaryDirectory() as folder:
        if not args.skip_step:
            step_benchmark(model, tokenizer, Path(folder), args, device)
        if not args.skip_epoch:
            epoch_benchmark(model, tokenizer, Path(folder), args, device)
    print(f"machine: {common.machine(device)}")


if __name__ == "__main__":
    main()
