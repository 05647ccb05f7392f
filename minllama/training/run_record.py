"""What makes a training run the run it is, recorded in its checkpoint, and what a later command
into the same folder may change.

A run's record is a frozen dataclass of plain values (the learning rate and its schedule, the
batch, the seed, a hash of the training text, ...), stored in the checkpoint as a dict, the
builtins torch.load(..., weights_only=True) reads. Its field names are the flags that set them,
`FLAG_NAMES` says where not, so a refusal can name the flag to change. Two uses:

- `--resume` must continue the same run: a setting that changed (a new --lr makes the schedule
  jump, a new --corpus trains on other text) is refused, unless `--allow_changed FLAG[,FLAG]` says
  the change is meant; then it is printed, and recorded with the step it was made at.
- a new run into a folder that holds another one (other settings) is refused unless `--resume`
  or `--overwrite` says what to do with it: runs never replace each other's files unnoticed.
"""

import hashlib
from dataclasses import asdict, fields

# Record fields set by a flag of another name.
FLAG_NAMES = {"corpus_sha256": "corpus", "val_corpus_sha256": "val_corpus", "instructions_sha256": "instructions",
              "train_sha256": "train", "checkpoint": "pretrained-model-path"}


def text_sha256(texts: list[str]) -> str:
    """A hash of the texts' content (not of a file's name or date: the same text anywhere is the same)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


def flag_of(field: str) -> str:
    return FLAG_NAMES.get(field, field)


def parse_allowed(value: str | None) -> frozenset[str]:
    """--allow_changed lr,max_steps -> {"lr", "max_steps"} (flag names, with or without the dashes)."""
    if not value:
        return frozenset()
    return frozenset(name.strip().lstrip("-") for name in value.split(",") if name.strip())


def allowable_flags(record_type) -> list[str]:
    """The flags --allow_changed may name for a record of this type."""
    return [flag_of(field.name) for field in fields(record_type)]


def changes(recorded: dict, current) -> list[tuple[str, object, object]]:
    """(flag, recorded value, current value) for every setting of `current` that differs."""
    now = asdict(current)
    return [(flag_of(name), recorded.get(name), value) for name, value in now.items() if recorded.get(name) != value]


def describe(changed: list[tuple[str, object, object]]) -> str:
    return "; ".join(f"--{flag} was {old}, this command says {new}" for flag, old, new in changed)


def check_resume(recorded: dict | None, current, allowed: frozenset[str], source) -> list[dict]:
    """The changes a --resume makes to the run recorded in `source`, each allowed by --allow_changed
    (printed and returned, to be recorded), or InputError naming the flags that are not."""
    from minllama.training.data import InputError

    unknown = sorted(allowed - set(allowable_flags(type(current))))
    if unknown:
        raise InputError(f"--allow_changed {','.join(unknown)}: not a setting of the run; it may name "
                         + ", ".join(allowable_flags(type(current))))
    if recorded is None:
        print(f"note: {source} records no run settings (written by an older version): they are not checked")
        return []
    changed = changes(recorded, current)
    refused = [change for change in changed if change[0] not in allowed]
    if refused:
        flags = ",".join(flag for flag, _, _ in refused)
        raise InputError(f"--resume would change the run in {source}: {describe(refused)}. A resumed run keeps "
                         f"its settings; to change them on purpose, add --allow_changed {flags}")
    for flag, old, new in changed:
        print(f"note: --{flag} changes from {old} to {new} on resuming (--allow_changed)")
    return [{"flag": flag, "from": old, "to": new} for flag, old, new in changed]


def check_folder_free(recorded: dict | None, current, source, what: str, resumable: bool = True) -> None:
    """A new run (no --resume, no --overwrite) into a folder whose `source` holds a run: refused
    unless that run had the same settings (then this one only makes it again)."""
    from minllama.training.data import InputError

    if recorded is not None and not changes(recorded, current):
        print(f"note: {source} holds a run with the same settings: it is made again from the start")
        return
    differs = f" ({describe(changes(recorded, current))})" if recorded is not None else ""
    ways = "add --resume to continue it, --overwrite to replace it" if resumable else "add --overwrite to replace it"
    raise InputError(f"{source} holds another {what} run{differs}: {ways}, or choose another --out_dir")
