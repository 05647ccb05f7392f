"""The command line of the assignment: one Llama, several uses.

    python run_llama.py --option generate   # continue a prompt at temperature 0 and 1
    python run_llama.py --option prompt     # zero-shot classification (classifier.LlamaZeroShotClassifier)
    python run_llama.py --option finetune   # train the whole model and a linear head (LlamaEmbeddingClassifier)
    python run_llama.py --option lora       # train LoRA adapters and the head only (lora.py)
    python run_llama.py --option pretrain   # train a language model on plain text (pretraining.py)
    python run_llama.py --option instruct_tune  # instruction tuning, loss on the answers (instruct_tuning.py)

Data files hold `LABEL ||| SENTENCE` lines; a label mapping is a JSON list of label names in
id order. Classification writes `PRED ||| SENTENCE` prediction files (input order, original
sentences) and a JSON summary of the run beside them. `python run_llama.py -h` lists the flags.

This file only reads the command line: every flag is checked before anything is loaded, then
one option runs (commands.py turns the flags into what classification.py, pretraining.py or the
generation needs), training on the one loop of training.py. Under `torchrun --nproc_per_node N`
training runs on N processes.
"""

import argparse
import json
import sys
import time
from dataclasses import asdict

from checkpoints import CheckpointError
from config import ARCHITECTURE_CHOICES
from commands import (ARCHITECTURE_FLAGS, DEFAULT_CHECKPOINT, LOOP_DEFAULTS, RunError, checked_output_folder,
                      choose_device, run_chat_option, run_classification_option, run_generate,
                      run_instruct_tune_option, run_pretrain_option)
from data import InputError
from utils import MissingAssetError, write_atomically

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
    # A literal list: the skeleton generator keeps only a course's own options in it.
    parser.add_argument("--option", choices=("generate", "prompt", "finetune", "lora", "pretrain", "chat",
                                             "instruct_tune", "ia3", "prompt_tuning", "prompt_finetune"),
                        default="generate",
                        help="generate: continue a prompt; prompt: zero-shot classification (frozen model); "
                             "finetune: train the whole model; lora: train LoRA adapters and the head; "
                             "pretrain: train a language model on --corpus (or the sentences of --train); "
                             "chat: talk to an instruct model through its chat template; "
                             "instruct_tune: instruction tuning through the chat template, loss on the answers; "
                             "ia3: train IA3 vectors and the head; prompt_tuning: train a soft prompt and the head; "
                             "prompt_finetune: train the zero-shot classifier itself")
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
    ours.add_argument("--dropout", type=float, default=None,
                      help="the model's own dropout (default: the checkpoint's, 0)")
    ours.add_argument("--limit", type=int, default=None, help="use only the first N lines of each data file")
    ours.add_argument("--stratified", action="store_true",
                      help="with --limit: a random N (drawn with --seed) that keeps each file's label proportions")
    ours.add_argument("--skip_test", action="store_true", help="predict the dev split only")
    ours.add_argument("--out_dir", default=".", help="folder for every output with a default name")
    ours.add_argument("--summary_out", default=None, help="default: <dataset>-<method>-output.json beside --dev_out")
    ours.add_argument("--checkpoint_out", default=None, help="default: {option}-{epochs}-{lr}.pt in --out_dir")
    ours.add_argument("--checkpoint_in", default=None,
                      help="predict dev/test with a saved {option}-{epochs}-{lr}.pt, without training")
    ours.add_argument("--save_merged", action="store_true",
                      help="lora: also save the model with the adapters merged into its weights")
    ours.add_argument("--epsilon", type=float, default=0.05, help="generate: drop tokens below this probability")
    ours.add_argument("--top_p", type=float, default=None,
                      help="generate, chat: nucleus sampling threshold (chat: 0.9)")
    ours.add_argument("--top_k", type=int, default=None, help="generate, chat: sample from the k most likely tokens")
    ours.add_argument("--min_p", type=float, default=None, help="generate: min-p sampling (Nguyen et al. 2024)")
    ours.add_argument("--repetition_penalty", type=float, default=None,
                      help="generate: divide the logits of tokens already seen by this (> 1; CTRL)")
    ours.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="generate, prompt, chat: the weights' type (float32 matches the graders' references)")
    ours.add_argument("--quantize", choices=("int8",), default=None,
                      help="generate, prompt, chat: int8 weights and activations in the linear layers (quantize.py)")
    ours.add_argument("--compile", action="store_true",
                      help="generate: torch.compile the one-token decoding step (fast_decode.py; the same tokens; "
                           "needs a C++ compiler, and compiling takes tens of seconds)")

    talk = parser.add_argument_group("chat (--option chat)")
    talk.add_argument("--message", default=None, help="answer this one message and exit (default: a conversation)")
    talk.add_argument("--system", default=None, help="a system message in front of the conversation")
    talk.add_argument("--max_new_tokens", type=int, default=256, help="the longest reply")
    talk.add_argument("--temperature", type=float, default=0.2, help="sampling temperature (0: greedy)")

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

    instruct = parser.add_argument_group("instruction tuning (--option instruct_tune)")
    instruct.add_argument("--instructions", default=None,
                          help='JSON lines of {"instruction", "response"} or {"messages": [...]} (default: the '
                               "--train split as classification instructions, answered by the label word)")
    add_method_flags(parser)

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
    lm.add_argument("--cache_dir", default=None,
                    help="token cache (default: $MINLLAMA_CACHE, else ~/.cache/minllama; MINLLAMA_CACHE=off: none)")
    args = parser.parse_args(argv)
    try:
        validate(args)
    except RunError as error:
        parser.error(str(error))
    if args.lr is None:  # the contract's 2e-5 for classification; pre-training's own default
        args.lr = LOOP_DEFAULTS["pretrain" if args.option == "pretrain" else "classification"]["lr"]
    return args


def validate(args) -> None:
    """Every flag's value, before anything is loaded."""
    for flag in ("batch_size", "epochs", "lora_rank", "limit", "max_sentence_len", "max_steps", "grad_accum",
                 "eval_batches", "patience", "train_tokenizer", "top_k", "max_new_tokens", *ARCHITECTURE_FLAGS):
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
    for flag in ("top_p", "min_p"):
        value = getattr(args, flag)
        if value is not None and not 0 < value <= 1:
            raise RunError(f"--{flag} must be in (0, 1], got {value}")
    if args.repetition_penalty is not None and not args.repetition_penalty > 0:
        raise RunError(f"--repetition_penalty must be greater than 0, got {args.repetition_penalty}")
    if args.temperature < 0:
        raise RunError(f"--temperature must not be negative, got {args.temperature}")
    if args.quantize is not None and args.dtype != "float32":
        raise RunError("--quantize int8 quantises float32 weights: leave out --dtype")
    if (args.quantize or args.dtype != "float32") and args.option not in ("generate", "prompt", "chat"):
        raise RunError("--quantize and --dtype are for inference (generate, prompt, chat); training stays float32")
    if args.compile and (args.option != "generate" or args.min_p is not None or args.repetition_penalty is not None):
        raise RunError("--compile compiles the decoding step of --option generate (without --min_p and "
                       "--repetition_penalty, which hook into Llama.generate)")
    if args.tokenizer == "char" and args.option != "pretrain":
        raise RunError("--tokenizer char builds a vocabulary from the corpus: it is for --option pretrain "
                       "(a model trained with it carries its tokenizer)")
    if args.option == "pretrain":
        validate_pretrain(args)
    elif any(getattr(args, flag) for flag in ARCHITECTURE_CHOICES):
        raise RunError(f"{'/'.join('--' + f for f in ARCHITECTURE_CHOICES)} shape a new model: "
                       "they are for --option pretrain")
    if args.instructions is not None and args.option != "instruct_tune":
        raise RunError("--instructions is the training data of --option instruct_tune")
    if args.checkpoint_in is not None and args.option not in TRAINED:
        raise RunError(f"--checkpoint_in reads a classification checkpoint: use it with --option {', '.join(TRAINED)}")
    if args.save_merged and args.option not in ("lora", "ia3"):
        raise RunError("--save_merged merges LoRA adapters or IA3 vectors: use it with --option lora or ia3")
    validate_methods(args)


# --------------------------------------------------------------------------------------------
# The classification methods beyond the four upstream options (issue 11; classification_methods.py)

CLASSIFICATION_METHODS = ("ia3", "prompt_tuning", "prompt_finetune")
TRAINED = ("finetune", "lora", *CLASSIFICATION_METHODS)  # the classification options that train


def add_method_flags(parser) -> None:
    methods = parser.add_argument_group("classification methods (none required)")
    methods.add_argument("--lora_targets", default="attention",
                         help="lora: the projections to adapt: attention, ffn, all, or names such as "
                              "compute_query,compute_value,w2")
    methods.add_argument("--lora_dropout", type=float, default=0.0, help="lora: dropout on the adapters' input")
    methods.add_argument("--n_virtual_tokens", type=int, default=20, help="prompt_tuning: the soft prompt's length")
    methods.add_argument("--prompt_init", choices=("question", "random"), default="question",
                         help="prompt_tuning: start from the zero-shot question's tokens or random tokens")
    methods.add_argument("--peft", choices=("lora", "ia3"), default=None,
                         help="prompt_finetune, instruct_tune: train LoRA adapters (--lora_rank, --lora_alpha) or "
                              "IA3 vectors instead of the whole model")
    methods.add_argument("--shots", type=int, default=0,
                         help="prompt: K demonstrations from --train, balanced over labels, drawn with --seed")
    methods.add_argument("--calibrate", action="store_true",
                         help="prompt: contextual calibration on content-free inputs (Zhao et al. 2021)")
    methods.add_argument("--chat_template", action="store_true", help="prompt: ask through the model's chat template")
    methods.add_argument("--head_init", choices=("random", "label_words"), default="random",
                         help="finetune, lora, ia3, prompt_tuning: label_words starts the head as the zero-shot "
                              "classifier (and appends the zero-shot question to every sentence)")
    methods.add_argument("--wise_ft", default=None,
                         help="finetune, lora, ia3 with --head_init label_words: comma-separated coefficients "
                              "in [0, 1]; after training keep the best interpolation on dev (WiSE-FT)")
    methods.add_argument("--mixout", type=float, default=None,
                         help="finetune: mix each weight with its pretrained value with this probability")
    methods.add_argument("--early_stop_on", choices=("accuracy", "loss"), default="accuracy",
                         help="the dev metric that picks the best checkpoint and that --patience watches")
    methods.add_argument("--advanced", action="store_true",
                         help="write <dataset>-<dev|test>-advanced-output.txt (the CMU A+ submission names)")


def validate_methods(args) -> None:
    """The method flags: each only with an option that uses it, each value in its range. (The
    modules are imported only for the flags that name them: a course skeleton ships none of them.)"""
    option = args.option
    classification = option in ("prompt", *TRAINED)
    used_with = {"peft": ("prompt_finetune", "instruct_tune"), "mixout": ("finetune",), "calibrate": ("prompt",),
                 "chat_template": ("prompt",), "wise_ft": ("finetune", "lora", "ia3")}
    for flag, options in used_with.items():
        if getattr(args, flag) not in (None, False) and option not in options:
            what = {"peft": "it adapts the backbone of those options (the others have none left to adapt, "
                            "or are adapters already)"}.get(flag, "it has no meaning elsewhere")
            raise RunError(f"--{flag} is for --option {' or '.join(options)}: {what}")
    for flag, default, options in (("shots", 0, ("prompt",)),
                                   ("head_init", "random", ("finetune", "lora", "ia3", "prompt_tuning")),
                                   ("n_virtual_tokens", 20, ("prompt_tuning",)),
                                   ("prompt_init", "question", ("prompt_tuning",))):
        if getattr(args, flag) != default and option not in options:
            raise RunError(f"--{flag} is for --option {' or '.join(options)}")
    if args.shots < 0:
        raise RunError(f"--shots must not be negative, got {args.shots}")
    if args.n_virtual_tokens < 1:
        raise RunError(f"--n_virtual_tokens must be positive, got {args.n_virtual_tokens}")
    if not 0 <= args.lora_dropout < 1:
        raise RunError(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    if args.mixout is not None and not 0 < args.mixout < 1:
        raise RunError(f"--mixout must be in (0, 1), got {args.mixout}")
    alphas = None
    try:
        if args.lora_targets != "attention":
            from adapters import parse_targets
            parse_targets(args.lora_targets)
        if args.wise_ft is not None:
            from wise_ft import parse_alphas
            alphas = parse_alphas(args.wise_ft)
    except ValueError as error:
        raise RunError(str(error)) from None
    if alphas is not None and args.head_init != "label_words":
        raise RunError("--wise_ft interpolates from the zero-shot classifier: add --head_init label_words")
    if alphas is not None and args.checkpoint_in is not None:
        raise RunError("--wise_ft sweeps after training: leave out --checkpoint_in")
    if args.stratified and args.limit is None:
        raise RunError("--stratified draws --limit examples: give --limit N")
    if args.advanced and not classification:
        raise RunError("--advanced names classification outputs: use it with a classification --option")


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
    shape_flags = (*ARCHITECTURE_FLAGS[:4], *ARCHITECTURE_CHOICES)
    if args.pretrained_model_path is not None and (args.preset or any(getattr(args, f) for f in shape_flags)):
        raise RunError("continued pre-training keeps the checkpoint's shape: leave out --preset and "
                       f"{'/'.join('--' + f for f in shape_flags)}")


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
        elif args.option == "chat":
            summary = run_chat_option(args, device)
        elif args.option == "pretrain":
            summary = run_pretrain_option(args, device, dist, out_dir)
        elif args.option == "instruct_tune":
            summary = run_instruct_tune_option(args, device, dist, out_dir)
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
