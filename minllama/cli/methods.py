"""The A+ classification methods on the course's command line (classify.py): ia3, prompt_tuning
and prompt_finetune, and on the course's options K-shot and calibrated prompting, the model's chat
template, the label-word head, WiSE-FT, Mixout and LoRA on other projections. Not in a skeleton."""

from dataclasses import dataclass, field
from pathlib import Path

from minllama.cli.classify import classify
from minllama.cli.common import RunError, checkpoint_shape, data_paths
from minllama.cli.inference import check_device
from minllama.methods.wise_ft import parse_alphas
from minllama.training.data import check_labels, has_placeholder_labels, read_examples
from support.adapters import parse_targets

TRAINED = ("finetune", "lora", "ia3", "prompt_tuning", "prompt_finetune")  # the classification options that train


def add_flags(parser) -> None:
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


def check(args) -> None:
    """The method flags: each only with an option that uses it, each value in its range."""
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
            parse_targets(args.lora_targets)
        if args.wise_ft is not None:
            alphas = parse_alphas(args.wise_ft)
    except ValueError as error:
        raise RunError(str(error)) from None
    if alphas is not None and args.head_init != "label_words":
        raise RunError("--wise_ft interpolates from the zero-shot classifier: add --head_init label_words")
    if alphas is not None and args.checkpoint_in is not None:
        raise RunError("--wise_ft sweeps after training: leave out --checkpoint_in")
    if args.advanced and not classification:
        raise RunError("--advanced names classification outputs: use it with a classification --option")


def run(args, device, dist, out_dir: Path) -> dict:
    from minllama.classify.builders import SHAPE_FIELDS
    from minllama.classify.method_builders import (DEFAULT_LORA_TARGETS, MethodChoice, build_method_classifier,
                                                   training_for)

    def make_choice(checkpoint, num_labels, trained) -> MethodChoice:
        """The flags' choice; what shapes the trained tensors comes from a --checkpoint_in's record."""
        shape = checkpoint_shape(trained, args, SHAPE_FIELDS)
        targets = shape["lora_targets"]  # a tuple in a record, the flag's text in an older checkpoint
        if isinstance(targets, str):
            targets = DEFAULT_LORA_TARGETS if targets == "attention" else parse_targets(targets)
        return MethodChoice(args.option, checkpoint, num_labels, args.hidden_dropout_prob,
                            trained.get("norm_type", args.norm), shape["lora_rank"], shape["lora_alpha"], args.dropout,
                            dtype=args.dtype, quantize=args.quantize, lora_targets=tuple(targets),
                            lora_dropout=shape["lora_dropout"], n_virtual_tokens=shape["n_virtual_tokens"],
                            prompt_init=shape["prompt_init"], seed=shape["seed"], calibrate=args.calibrate,
                            chat_template=args.chat_template, peft=shape["peft"], head_init=shape["head_init"],
                            mixout=args.mixout)

    check_device(args.quantize, device)
    sweep = WiseFTSweep(tuple(parse_alphas(args.wise_ft))) if args.wise_ft is not None else None
    if sweep is not None and has_placeholder_labels(data_paths(args)["dev"]):
        raise RunError(f"--wise_ft needs real dev labels, but those of {data_paths(args)['dev']} are placeholders")
    return classify(args, device, dist, out_dir, training_for, make_choice, build=build_method_classifier,
                    demonstrations=(lambda paths: draw_shots(paths, args)) if args.shots else None,
                    method="advanced" if args.advanced else None, save_merged=args.save_merged,
                    early_stop_on=args.early_stop_on, after_training=sweep)


def draw_shots(paths: dict, args) -> tuple:
    """--shots K: K (label, sentence) demonstrations from the training split, balanced over the
    labels, drawn with --seed (prompting.draw_demonstrations); too few of a label is an error now."""
    from minllama.methods.prompting import draw_demonstrations
    from minllama.training.data import read_label_names

    train = read_examples(paths["train"])
    check_labels(train, read_label_names(paths["labels"]), paths["labels"])
    try:
        drawn = draw_demonstrations([(e.label, e.sentence) for e in train], len(read_label_names(paths["labels"])),
                                    args.shots, args.seed)
    except ValueError as error:
        raise RunError(f"{error} in {paths['train']}") from None
    return tuple(drawn)


@dataclass
class WiseFTSweep:
    """WiSE-FT (wise_ft.py) after training: score theta(a) = (1 - a) theta_0 + a theta_1 on dev for
    every a of --wise_ft, keep the best in the model and in the checkpoint. theta_0 is the trained
    tensors as they were before training (for LoRA: with the trained lora_A and zero lora_B, so that
    the line is the weights' line)."""
    alphas: tuple[float, ...]
    zero_shot: dict = field(default_factory=dict)

    def before(self, model) -> None:
        from minllama.training.supervised import trained_state

        self.zero_shot = trained_state(model)

    def after(self, model, run, dev_encoded, pad_id: int, device, info: dict, dist) -> dict:
        from minllama.methods.wise_ft import lora_zero_shot_state, wise_ft_sweep
        from minllama.training.supervised import predict, save_checkpoint, score, trained_state

        trained = trained_state(model)
        start = {**lora_zero_shot_state(trained), **{k: v for k, v in self.zero_shot.items() if "lora_" not in k}}
        dev = run.splits["dev"]

        def dev_accuracy(candidate) -> float:
            log_probs = predict(candidate, dev_encoded, run.batch_size, pad_id, device, "dev")
            return score(dev.examples, log_probs, run.choice.num_labels)["accuracy"]

        best, accuracies = wise_ft_sweep(model, start, trained, list(self.alphas), dev_accuracy)
        if dist.is_main:
            for alpha, accuracy in accuracies.items():
                print(f"wise-ft alpha {alpha:g}: dev acc :: {accuracy:.3f}")
            print(f"wise-ft: kept alpha {best:g}")
            save_checkpoint(run.checkpoint_out, model, model.llama.config,
                            {**info, "wise_ft_alpha": best, "dev_acc": accuracies[best]})
        return {"wise_ft": {"best_alpha": best, "dev_accuracy": {str(a): acc for a, acc in accuracies.items()}}}
