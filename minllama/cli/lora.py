"""`--option lora`: classification (classify.py) with only LoRA adapters and the head training
(minllama/classify/lora_training.py on lora.py)."""

from pathlib import Path

from minllama.cli.classify import classify
from minllama.cli.common import RunError, check_positive, checkpoint_shape


def add_flags(parser) -> None:
    group = parser.add_argument_group("LoRA (--option lora)")
    group.add_argument("--lora_rank", type=int, default=4)
    group.add_argument("--lora_alpha", type=float, default=1.0,
                       help="adapter scale alpha/rank; the default 1 with rank 4 barely learns at "
                            "--lr 2e-5: try --lr 1e-3 --lora_alpha 4 (alpha = rank)")
    group.add_argument("--save_merged", action="store_true",
                       help="lora: also save the model with the adapters merged into its weights")


def check(args) -> None:
    check_positive(args, "lora_rank")
    if not args.lora_alpha > 0:
        raise RunError(f"--lora_alpha must be greater than 0, got {args.lora_alpha}")
    if args.save_merged and args.option not in ("lora", "ia3"):
        raise RunError("--save_merged merges LoRA adapters or IA3 vectors: use it with --option lora or ia3")


def run(args, device, dist, out_dir: Path) -> dict:
    from minllama.classify.builders import ClassifierChoice
    from minllama.classify.lora_training import LORA

    def make_choice(checkpoint, num_labels, trained) -> ClassifierChoice:
        shape = checkpoint_shape(trained, args, ("lora_rank", "lora_alpha"))
        return ClassifierChoice(args.option, checkpoint, num_labels, args.hidden_dropout_prob,
                                trained.get("norm_type", args.norm), shape["lora_rank"], shape["lora_alpha"],
                                args.dropout)

    return classify(args, device, dist, out_dir, lambda choice: LORA, make_choice, save_merged=args.save_merged)
