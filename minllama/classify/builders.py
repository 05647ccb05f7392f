"""What the course's classification options build: the classifier, what in it trains, and how
its inputs are encoded (classification.py then trains and predicts the same way for all of them).

- prompt: the frozen zero-shot classifier (classifier.LlamaZeroShotClassifier).
- finetune: a linear head on the last real token's hidden state (LlamaEmbeddingClassifier), the
  whole backbone trained.
- lora: the same head, with only LoRA adapters training in the backbone (lora.py; the option's
  Training comes from minllama/cli/lora.py, so a course without LoRA ships nothing of it).

The A+ options (method_builders.py) build on these with their own choices and trainings.
"""

from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from classifier import LlamaEmbeddingClassifier, LlamaZeroShotClassifier
from minllama.training.data import check_vocabulary


@dataclass(frozen=True)
class ClassifierChoice:
    """What to build: the option, the base checkpoint, the head and the LoRA shape."""
    option: str
    checkpoint: Path
    num_labels: int
    hidden_dropout_prob: float
    norm_type: str | None
    lora_rank: int = 4
    lora_alpha: float = 1.0
    dropout: float | None = None  # the model's own dropout (None: the checkpoint's)


def choice_record(choice: ClassifierChoice) -> dict:
    """What a classification checkpoint stores to rebuild its model: the choice's fields, as the
    builtins torch.load(..., weights_only=True) reads (the base checkpoint as a path string)."""
    values = {field.name: getattr(choice, field.name) for field in fields(choice)}
    return {name: str(value) if isinstance(value, Path) else value for name, value in values.items()}


# The choice fields that shape a checkpoint's trained tensors (--checkpoint_in rebuilds its model
# with the checkpoint's own, whatever the flags say). A checkpoint written before choice_record
# stored the command line (vars(args)) instead, where they are under the same names.
SHAPE_FIELDS = ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout", "n_virtual_tokens", "prompt_init", "seed",
                 "peft", "head_init")


def recorded_choice(checkpoint: dict) -> dict:
    """The choice fields a classification checkpoint was trained with ({} for none): its record,
    or from an older checkpoint the same read back from its flags."""
    if "choice" in checkpoint:
        return dict(checkpoint["choice"])
    flags = checkpoint.get("args", {})
    found = {name: flags[name] for name in SHAPE_FIELDS if name in flags}
    if checkpoint.get("lora"):
        found.update(lora_rank=checkpoint["lora"]["rank"], lora_alpha=checkpoint["lora"]["alpha"])
    if flags.get("pretrained_model_path"):
        found["checkpoint"] = flags["pretrained_model_path"]
    return found


@dataclass(frozen=True)
class Training:
    """What trains in a classifier: `make_trainable(classifier, choice)` opts it in (the classifier
    starts frozen); an adapter method also names its tensors' prefix (adapters.count_parameters)
    and, where it can, how to fold them into the weights (--save_merged)."""
    name: str
    make_trainable: Callable
    adapter_prefix: str | None = None
    merge: Callable | None = None


@dataclass(frozen=True)
class Encoding:
    """How encode_examples turns a sentence into a model input: [BOS] + sentence + suffix_ids,
    in at most max_len positions."""
    suffix_ids: list[int]
    max_len: int
    bos: bool = True


def full_finetuning(classifier, choice) -> None:
    """Every parameter trains."""
    classifier.llama.requires_grad_(True)


FINETUNING = Training("finetune", full_finetuning)


def classifier_config(choice: ClassifierChoice) -> SimpleNamespace:
    """The classifiers' config (DESIGN.md): its option 'pretrain' builds a frozen backbone (not
    the command line's --option pretrain); the Training then opts in what trains."""
    return SimpleNamespace(pretrained_model_path=choice.checkpoint, num_labels=choice.num_labels, option="pretrain",
                           hidden_dropout_prob=choice.hidden_dropout_prob, norm_type=choice.norm_type,
                           dropout=choice.dropout)


def build_classifier(choice: ClassifierChoice, training: Training | None, tokenizer, label_names: list[str]):
    """The option's classifier and its Encoding: the zero-shot one for prompt (training None),
    else the embedding classifier with `training` applied."""
    config = classifier_config(choice)
    if training is None:
        model = LlamaZeroShotClassifier(config, tokenizer, label_names)
        encoding = Encoding(model.question_ids, model.llama.config.max_seq_len - model.max_label_len)
    else:
        model = LlamaEmbeddingClassifier(config)
        training.make_trainable(model, choice)
        encoding = Encoding([], model.llama.config.max_seq_len)
    check_vocabulary(tokenizer, model.llama.config.vocab_size, choice.checkpoint)
    return model, encoding
