"""`--option prompt` and `--option finetune`: read and check the data the flags name, then
classify (minllama/classify/classification.py): zero-shot, or after training the model and a head.

`classify` takes what trains (lora.py's family passes LoRA): everything else, the splits,
the checkpoint, the predictions and the summary, is the same for every classification option.
"""

from pathlib import Path

from minllama.cli.common import (RunError, check_fraction, check_positive, data_paths, load_tokenizer, loop_settings,
                                 note_replaced, prediction_splits, resolve_checkpoint, training_split)
from minllama.training.data import dataset_name, has_placeholder_labels, read_label_names
from support.course import output_name


def add_flags(parser) -> None:
    group = parser.add_argument_group("classification (prompt, finetune, ...)")
    group.add_argument("--dev_out", default=None, help="default: <dataset>-dev-<method>-output.txt")
    group.add_argument("--test_out", default=None, help="default: <dataset>-test-<method>-output.txt")
    group.add_argument("--hidden_dropout_prob", type=float, default=0.3, help="the classifier head's dropout")
    group.add_argument("--limit", type=int, default=None, help="use only the first N lines of each data file")
    group.add_argument("--stratified", action="store_true",
                       help="with --limit: a random N (drawn with --seed) that keeps each file's label proportions")
    group.add_argument("--skip_test", action="store_true", help="predict the dev split only")
    group.add_argument("--checkpoint_out", default=None, help="default: {option}-{epochs}-{lr}.pt in --out_dir")
    group.add_argument("--checkpoint_in", default=None,
                       help="predict dev/test with a saved {option}-{epochs}-{lr}.pt, without training")


def check(args) -> None:
    check_positive(args, "limit")
    check_fraction(args, "hidden_dropout_prob")
    if args.stratified and args.limit is None:
        raise RunError("--stratified draws --limit examples: give --limit N")
    if args.checkpoint_in is not None and args.option in ("prompt", "generate", "chat", "pretrain"):
        raise RunError("--checkpoint_in reads a classification checkpoint: use it with an option that trains")


def run(args, device, dist, out_dir: Path) -> dict:
    from minllama.classify.builders import FINETUNING, ClassifierChoice

    return classify(args, device, dist, out_dir, lambda choice: None if args.option == "prompt" else FINETUNING,
                    lambda checkpoint, num_labels, trained: ClassifierChoice(
                        args.option, checkpoint, num_labels, args.hidden_dropout_prob,
                        trained.get("norm_type", args.norm), dropout=args.dropout))


def read_checkpoint_in(args, label_names: list[str], labels_path) -> dict:
    """What --checkpoint_in was trained with ({} without it): its option and labels must be these."""
    from support.checkpoints import load_torch_file

    if args.checkpoint_in is None:
        return {}
    if not Path(args.checkpoint_in).is_file():
        raise RunError(f"--checkpoint_in: {args.checkpoint_in} not found")
    recorded = load_torch_file(args.checkpoint_in, mmap=True)
    if recorded.get("option") != args.option:
        raise RunError(f"--checkpoint_in {args.checkpoint_in} was trained with --option "
                       f"{recorded.get('option')}, not {args.option}")
    if recorded.get("label_names") != label_names:
        raise RunError(f"--checkpoint_in {args.checkpoint_in} classifies into {recorded.get('label_names')}, "
                       f"but {labels_path} names {label_names}")
    return recorded


def classify(args, device, dist, out_dir: Path, training_for, make_choice, *, build=None, demonstrations=None,
             method=None, save_merged=False, early_stop_on="accuracy", after_training=None) -> dict:
    """Read the splits, build the ClassificationRun, classify, and name the summary file.

    make_choice(checkpoint, num_labels, trained) gives the run's choice (`trained`: the choice
    fields a --checkpoint_in was trained with, {} without one), training_for(choice) what trains in
    it. The A+ methods add their builder, their demonstrations (demonstrations(paths) -> K solved
    examples), the output word, and a step after training."""
    from minllama.classify.builders import recorded_choice
    from minllama.classify.classification import ClassificationRun, run_classification

    paths = data_paths(args)
    label_names = read_label_names(paths["labels"])
    trained = recorded_choice(read_checkpoint_in(args, label_names, paths["labels"]))
    option, dataset = args.option, dataset_name(paths["dev"])
    method = method or output_name(option)
    splits = {}
    if option != "prompt" and args.checkpoint_in is None:
        splits["train"] = training_split(paths, label_names, args)
    shots = demonstrations(paths) if demonstrations else ()
    splits.update(prediction_splits(paths, label_names, dataset, method, args, out_dir))
    print(", ".join(f"{name}: {len(split.examples)} examples" for name, split in splits.items()))
    if args.patience is not None and "train" in splits and has_placeholder_labels(paths["dev"]):
        raise RunError(f"--patience needs real dev labels, but those of {paths['dev']} are placeholders")

    checkpoint = resolve_checkpoint(args.pretrained_model_path or trained.get("checkpoint"))
    choice = make_choice(checkpoint, len(label_names), trained)
    if shots:
        from dataclasses import replace

        choice = replace(choice, demonstrations=shots)
    run = ClassificationRun(
        choice=choice, label_names=label_names, splits=splits, batch_size=args.batch_size,
        max_sentence_len=args.max_sentence_len, epochs=args.epochs, settings=loop_settings(args, "classification"),
        seed=args.seed, checkpoint_out=Path(args.checkpoint_out) if args.checkpoint_out else
        out_dir / f"{option}-{args.epochs}-{args.lr}.pt", checkpoint_in=args.checkpoint_in,
        save_merged=save_merged,
        training=training_for(choice), **({"build": build} if build else {}),
        early_stop_on=early_stop_on, after_training=after_training)
    summary_out = (Path(args.summary_out) if args.summary_out else
                   splits["dev"].predictions_out.parent / f"{dataset}-{method}-output.json")
    note_replaced([*(split.predictions_out for split in splits.values() if split.predictions_out), summary_out,
                   *([run.checkpoint_out] if "train" in splits else [])])
    print(f"loading {checkpoint} ...")
    tokenizer = load_tokenizer(args, checkpoint)
    summary = run_classification(run, tokenizer, device, dist)
    return {**summary, "summary_out": summary_out}
