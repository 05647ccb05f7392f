"""The command line of the assignment: one Llama, several uses.

    python run_llama.py --option generate   # continue a prompt at temperature 0 and 1
    python run_llama.py --option prompt     # zero-shot classification (classifier.LlamaZeroShotClassifier)
    python run_llama.py --option finetune   # train the whole model and a linear head (LlamaEmbeddingClassifier)
    python run_llama.py --option lora       # train LoRA adapters and the head only (lora.py)

Data files hold `LABEL ||| SENTENCE` lines; a label mapping is a JSON list of label names in
id order. Classification writes `PRED ||| SENTENCE` prediction files (input order, original
sentences) and a JSON summary of the run beside them. `python run_llama.py -h` lists the flags:
those every option shares here, the others in the module of their option's family (the option
table, OPTION_FAMILIES in support/course.py, says which; minllama/cli holds them). Every flag is
checked before anything is loaded, then the option runs, training on the one loop of
minllama/training/loop.py; under `torchrun --nproc_per_node N` on N processes.
"""

import argparse
import importlib
import json
import os
import sys
import time
from dataclasses import asdict

# An operation Apple's MPS backend lacks runs on the CPU instead of stopping the run (read when
# torch is imported, so it is set before anything imports torch).
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

from minllama.cli.common import (LOOP_DEFAULTS, RunError, check_fraction, check_positive, checked_output_folder,
                                 choose_device, output_folder_lock)
from minllama.training.data import InputError
from support.course import OPTION_HELP, families_here, family_running, options_here
from support.errors import CheckpointError
from utils import MissingAssetError, NoSpaceError, write_atomically


def build_parser() -> tuple[argparse.ArgumentParser, list]:
    """The parser of every flag this copy has: the shared ones, then each option family's; and
    the families' modules (the option table's rows this copy ships)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default=None, help="default: <dataset>-train.txt beside --dev")
    parser.add_argument("--dev", default=None, help="default: data/cfimdb-dev.txt in the repository")
    parser.add_argument("--test", default=None, help="default: <dataset>-test.txt beside --dev")
    parser.add_argument("--label-names", default=None,
                        help="JSON list of label names (default: <dataset>-label-mapping.json beside --dev)")
    parser.add_argument("--pretrained-model-path", default=None,
                        help="a .pt, llama2.c .bin or GGUF checkpoint (default: stories42M.pt, or SmolLM2-135M "
                             "when that is absent; pretrain: none, a new model)")
    parser.add_argument("--max_sentence_len", type=int, default=None,
                        help="keep at most this many tokens of each sentence (the question is never cut)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--epochs", type=int, default=5, help="classification: passes over the training split")
    parser.add_argument("--option", choices=options_here(), default="generate",
                        help="; ".join(f"{option}: {OPTION_HELP[option]}" for option in options_here()))
    parser.add_argument("--use_gpu", action="store_true", help="run on the GPU (CUDA or MPS); error if none")
    parser.add_argument("--batch_size", type=int, default=8, help="examples per optimizer step, over all processes")
    parser.add_argument("--lr", type=float, default=None, help="default: 2e-5 (classification), 5e-4 (pretrain)")

    ours = parser.add_argument_group("more (none required)")
    ours.add_argument("--device", choices=("cpu", "cuda", "mps", "auto"), default=None,
                      help="default: cpu, or the GPU with --use_gpu (under torchrun: this process's GPU)")
    ours.add_argument("--norm", choices=("rmsnorm", "layernorm"), default=None,
                      help="the normalisation the checkpoint was trained with (default: rmsnorm)")
    ours.add_argument("--tokenizer", default=None,
                      help="a SentencePiece .model or GGUF file (default: the checkpoint's own, else tokenizer.model)")
    ours.add_argument("--dropout", type=float, default=None,
                      help="the model's own dropout (default: the checkpoint's, 0)")
    ours.add_argument("--out_dir", default=".", help="folder for every output with a default name")
    ours.add_argument("--summary_out", default=None, help="default: <dataset>-<method>-output.json beside --dev_out")

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
    loop.add_argument("--eval_every", type=int, default=None,
                      help="steps between evaluations, at least 1 (default: every epoch; pretrain: a tenth of --max_steps)")
    loop.add_argument("--patience", type=int, default=None, help="stop after N evaluations without improvement")
    loop.add_argument("--amp", choices=("auto", "bfloat16", "float16", "off"), default="auto",
                      help="mixed precision of training (auto: bfloat16 on GPUs of compute capability 8.0+, "
                           "float16 with a gradient scaler below, off on the CPU and MPS)")

    families = [importlib.import_module(family.module) for family in families_here()]
    for family in families:
        family.add_flags(parser)
    return parser, families


def get_args(argv=None) -> argparse.Namespace:
    parser, families = build_parser()
    args = parser.parse_args(argv)
    try:
        check(args)
        for family in families:
            family.check(args)
    except RunError as error:
        parser.error(str(error))
    if args.lr is None:  # the contract's 2e-5 for classification; pre-training's own default
        args.lr = LOOP_DEFAULTS["pretrain" if args.option == "pretrain" else "classification"]["lr"]
    return args


def check(args) -> None:
    """The shared flags' values, before anything is loaded (each family checks its own)."""
    check_positive(args, "batch_size", "epochs", "max_sentence_len", "max_steps", "grad_accum", "patience",
                   "eval_every")
    check_fraction(args, "dropout")
    for flag in ("lr", "max_grad_norm"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise RunError(f"--{flag} must be greater than 0, got {value}")
    for flag in ("warmup_steps", "min_lr", "weight_decay"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            raise RunError(f"--{flag} must not be negative, got {value}")
    if args.beta2 is not None and not 0 <= args.beta2 < 1:
        raise RunError(f"--beta2 must be in [0, 1), got {args.beta2}")


def main(argv=None) -> int:
    args = get_args(argv)
    start = time.time()
    from minllama.training.loop import Distributed, TrainingDiverged, TrainingInterrupted, resolve_amp
    from utils import seed_everything

    dist = Distributed.from_environment()
    if dist.is_main:
        print(f"args: {vars(args)}")
    try:
        out_dir = checked_output_folder(args.out_dir)
        device = choose_device(args, dist)
        args.amp = resolve_amp(args.amp, device)  # what auto means here, so the run's summary records it
        seed_everything(args.seed)
        family = importlib.import_module(family_running(args.option).module)
        with output_folder_lock(out_dir, dist):
            summary = family.run(args, device, dist, out_dir)
            summary_out = summary.pop("summary_out", None)
            if summary_out is not None and dist.is_main:
                summary.update(seconds=time.time() - start, args=vars(args))
                write_atomically(summary_out, json.dumps(plain(summary), indent=2) + "\n")
                print(f"wrote {summary_out}")
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except (InputError, MissingAssetError, CheckpointError, TrainingDiverged, NoSpaceError) as error:
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
