"""`--option pretrain`: flags -> the settings of minllama/pretraining/pretraining.py, which trains a
Llama on plain text, from scratch or continued. Not in a skeleton."""

import tempfile
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from config import ARCHITECTURE_CHOICES, PRESETS, LlamaConfig
from minllama.cli.common import RunError, check_positive, loop_settings, model_overrides
from minllama.pretraining import architectures  # noqa: F401  (hands the ablated layers to llama.py)
from utils import cache_dir

ARCHITECTURE_FLAGS = ("dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len")


def add_flags(parser) -> None:
    lm = parser.add_argument_group("pre-training (--option pretrain)")
    lm.add_argument("--corpus", default=None, help="a UTF-8 text file (default: the sentences of --train)")
    lm.add_argument("--val_corpus", default=None, help="validation text (default: the last 10%% of the corpus)")
    lm.add_argument("--train_tokenizer", type=int, default=None,
                    help="train a SentencePiece BPE vocabulary of N pieces")
    lm.add_argument("--preset", default=None, help="a llama2.c shape: stories260K, stories15M, stories42M, stories110M")
    for flag in ARCHITECTURE_FLAGS:
        lm.add_argument(f"--{flag}", type=int, default=None)
    for flag, choices in ARCHITECTURE_CHOICES.items():  # ablations of a new model (architectures.py)
        lm.add_argument(f"--{flag}", choices=choices, default=None, help=f"default: {choices[0]}, Llama 2's")
    lm.add_argument("--eval_batches", type=int, default=20, help="validation batches per evaluation")
    lm.add_argument("--resume", action="store_true", help="continue the run in --out_dir from its last.pt")
    lm.add_argument("--allow_changed", default=None, metavar="FLAG[,FLAG]",
                    help="with --resume: the settings it may change on purpose (e.g. lr,max_steps); any other "
                         "change to the run is refused")
    lm.add_argument("--overwrite", action="store_true",
                    help="pretrain, instruct_tune: replace the run of other settings that --out_dir holds "
                         "(without it, such a folder is refused)")
    lm.add_argument("--cache_dir", default=None,
                    help="token cache (default: $MINLLAMA_CACHE, else ~/.cache/minllama; MINLLAMA_CACHE=off: none)")


def check(args) -> None:
    check_positive(args, "train_tokenizer", "eval_batches", *ARCHITECTURE_FLAGS)
    if args.tokenizer == "char" and args.option != "pretrain":
        raise RunError("--tokenizer char builds a vocabulary from the corpus: it is for --option pretrain "
                       "(a model trained with it carries its tokenizer)")
    if args.allow_changed is not None and not args.resume:
        raise RunError("--allow_changed names the settings a --resume may change: give --resume too")
    if args.resume and args.overwrite:
        raise RunError("--resume continues the run in --out_dir, --overwrite replaces it: give one of them")
    if args.overwrite and args.option not in ("pretrain", "instruct_tune"):
        raise RunError("--overwrite is for --option pretrain and instruct_tune (classification always replaces "
                       "its files, and says which)")
    if args.option != "pretrain":
        given = [f"--{flag}" for flag in (*ARCHITECTURE_FLAGS, "preset") if getattr(args, flag) is not None]
        if given:
            raise RunError(f"{'/'.join(given)} shape a new model for --option pretrain; --option {args.option} "
                           "uses the checkpoint's own shape and context")
        if any(getattr(args, flag) for flag in ARCHITECTURE_CHOICES):
            raise RunError(f"{'/'.join('--' + f for f in ARCHITECTURE_CHOICES)} shape a new model: "
                           "they are for --option pretrain")
        return
    if args.preset is not None and args.preset not in PRESETS:
        raise RunError(f"--preset {args.preset} does not exist: choose one of {', '.join(PRESETS)}")
    if args.max_steps is None:
        raise RunError("--option pretrain counts optimizer steps: give --max_steps")
    if args.corpus is None and args.train is None:
        raise RunError("--option pretrain needs a text: --corpus FILE, or --train FILE for its sentences")
    if args.train_tokenizer is not None and (args.tokenizer is not None or args.pretrained_model_path is not None):
        raise RunError("--train_tokenizer makes a new vocabulary for a new model: leave out --tokenizer "
                       "and --pretrained-model-path")
    shape_flags = (*ARCHITECTURE_FLAGS[:4], *ARCHITECTURE_CHOICES)
    if args.pretrained_model_path is not None and (args.preset or any(getattr(args, f) for f in shape_flags)):
        raise RunError("continued pre-training keeps the checkpoint's shape: leave out --preset and "
                       f"{'/'.join('--' + f for f in shape_flags)}")


def run(args, device, dist, out_dir: Path) -> dict:
    from minllama.pretraining.pretraining import ModelChoice, PretrainData, RunFolder, run_pretraining
    from minllama.training.run_record import parse_allowed

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
        folder_use = RunFolder(args.resume, args.overwrite, parse_allowed(args.allow_changed))
        summary = run_pretraining(data, choice, settings, out_dir, folder_use, device, dist)
    return {**summary, "summary_out": None}  # pretraining wrote its own summary.json
