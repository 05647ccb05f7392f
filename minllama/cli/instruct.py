"""`--option instruct_tune`: flags -> the settings of minllama/instruct/instruct_tuning.py
(instruction tuning through the chat template, the loss on the answers). Not in a skeleton."""

from pathlib import Path

from minllama.cli.common import (RunError, data_paths, load_tokenizer, loop_settings, model_overrides,
                                 prediction_splits, resolve_checkpoint, training_split)
from minllama.training.data import dataset_name, read_label_names


def add_flags(parser) -> None:
    instruct = parser.add_argument_group("instruction tuning (--option instruct_tune)")
    instruct.add_argument("--instructions", default=None,
                          help='JSON lines of {"instruction", "response"} or {"messages": [...]} (default: the '
                               "--train split as classification instructions, answered by the label word)")


def check(args) -> None:
    if args.instructions is not None and args.option != "instruct_tune":
        raise RunError("--instructions is the training data of --option instruct_tune")


def run(args, device, dist, out_dir: Path) -> dict:
    """Read and check the instructions (--instructions, else the --train split as instructions)
    and the splits to classify after training (dev/test: by default beside --dev as for the other
    options; with --instructions only when --dev is given), then instruct_tuning.py."""
    from minllama.inference.chat import ChatTemplateError
    from minllama.instruct.instruct_data import InstructionDataError, read_conversations
    from minllama.instruct.instruct_tuning import InstructionTuning, run_instruction_tuning

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
                        out_dir / f"instruct_tune-{args.epochs}-{args.lr}.pt"), overwrite=args.overwrite)
    print(f"loading {checkpoint} ...")
    try:
        summary = run_instruction_tuning(run, load_tokenizer(args, checkpoint), device, dist)
    except ChatTemplateError as error:
        raise RunError(str(error)) from None
    summary_out = Path(args.summary_out) if args.summary_out else (
        (splits["dev"].predictions_out.parent if splits else out_dir) / f"{dataset}-instruct_tune-output.json")
    return {**summary, "summary_out": summary_out}
