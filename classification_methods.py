"""What each classification `--option` builds: the classifier, what in it trains, and how its
inputs are encoded (classification.py then trains and predicts the same way for all of them).

- prompt: the frozen zero-shot classifier (classifier.LlamaZeroShotClassifier); with --shots,
  --calibrate or --chat_template the generalised one of prompting.py (demonstrations in a cached
  prefix, contextual calibration, the model's chat template).
- finetune, lora, ia3, prompt_tuning: a linear head on the last real token's hidden state
  (LlamaEmbeddingClassifier), the backbone trained whole, through LoRA (lora.py), IA3 (ia3.py)
  or a soft prompt (prompt_tuning.py). --head_init label_words starts the head from the label
  words' output embeddings, with the zero-shot question after every sentence (wise_ft.py): the
  untrained classifier is then the zero-shot one.
- prompt_finetune: the zero-shot scoring made trainable (prompting.PromptClassifier), the
  backbone trained whole or, with --peft, through LoRA or IA3.
"""

from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

from classifier import (LlamaEmbeddingClassifier, LlamaZeroShotClassifier, continuation_ids, load_backbone,
                        zero_shot_question)
from data import InputError

# --option -> the word in its output file names (DESIGN.md, "Data and file formats"; new options keep their name)
METHOD_NAMES = {"prompt": "prompting", "finetune": "finetuning", "lora": "lora", "ia3": "ia3",
                "prompt_tuning": "prompt_tuning", "prompt_finetune": "prompt_finetune"}
# The name prefix of each parameter-efficient method's own tensors (adapters.count_parameters).
ADAPTER_PREFIXES = {"lora": "lora_", "ia3": "ia3_", "prompt_tuning": "prompt_embeddings"}


@dataclass(frozen=True)
class ClassifierChoice:
    """What to build: the option, the base checkpoint and every method's settings."""
    option: str
    checkpoint: Path
    num_labels: int
    hidden_dropout_prob: float
    norm_type: str | None
    lora_rank: int
    lora_alpha: float
    dtype: str = "float32"  # prompt: the weights' type, or int8 linear layers (quantize.py)
    quantize: str | None = None
    lora_targets: tuple[str, ...] = ("compute_query", "compute_key", "compute_value", "compute_output")
    lora_dropout: float = 0.0
    n_virtual_tokens: int = 20  # prompt_tuning
    prompt_init: str = "question"  # prompt_tuning: "question" or "random"
    seed: int = 0  # prompt_tuning's random initial tokens
    prompt_init_ids: tuple[int, ...] = ()  # prompt_tuning: set by build_classifier from prompt_init
    demonstrations: tuple[tuple[int, str], ...] = ()  # prompt: the K solved examples of --shots
    calibrate: bool = False
    chat_template: bool = False
    peft: str | None = None  # prompt_finetune: "lora" or "ia3" instead of the whole backbone
    head_init: str = "random"  # or "label_words"
    mixout: float | None = None  # finetune
    dropout: float | None = None  # the model's own dropout (None: the checkpoint's)

    @property
    def adapter_method(self) -> str | None:
        """The parameter-efficient method whose tensors train, if any."""
        if self.option == "prompt_finetune":
            return self.peft
        return self.option if self.option in ADAPTER_PREFIXES else None

    @property
    def prompted(self) -> bool:
        """Does the prompt option need prompting.py's classifier rather than the plain zero-shot one?"""
        return self.option == "prompt" and bool(self.demonstrations or self.calibrate or self.chat_template)


@dataclass(frozen=True)
class Encoding:
    """How encode_examples turns a sentence into a model input: [BOS] + sentence + suffix_ids,
    in at most max_len positions."""
    suffix_ids: list[int]
    max_len: int
    bos: bool = True


def lora_targets(spec: str) -> tuple[str, ...]:
    """--lora_targets as projection names (adapters.parse_targets, imported only beyond the default)."""
    if spec == "attention":
        return ClassifierChoice.lora_targets
    from adapters import parse_targets

    return parse_targets(spec)


def build_classifier(choice: ClassifierChoice, tokenizer, label_names: list[str]):
    """The option's classifier and its Encoding. Trained classifiers start frozen (the classifier
    config's own option 'pretrain': a frozen backbone, not the command line's --option pretrain)
    and TRAINABLE_PARAMETERS opts in what trains."""
    config = SimpleNamespace(pretrained_model_path=choice.checkpoint, num_labels=choice.num_labels,
                             option="pretrain", hidden_dropout_prob=choice.hidden_dropout_prob,
                             norm_type=choice.norm_type, dropout=choice.dropout)
    if choice.option == "prompt" and not choice.prompted:
        from quantize import prepare_for_inference

        model = LlamaZeroShotClassifier(config, tokenizer, label_names)
        prepare_for_inference(model.llama, choice.dtype, choice.quantize)
        encoding = Encoding(model.question_ids, model.llama.config.max_seq_len - model.max_label_len)
    elif choice.option in ("prompt", "prompt_finetune"):
        model, encoding = prompt_classifier(config, choice, tokenizer, label_names)
    else:
        if choice.option == "prompt_tuning":
            from prompt_tuning import prompt_init_ids

            text = zero_shot_question(label_names) if choice.prompt_init == "question" else None
            choice = replace(choice, prompt_init_ids=tuple(prompt_init_ids(tokenizer, choice.n_virtual_tokens, text,
                                                                           choice.seed)))
        model = LlamaEmbeddingClassifier(config)
        suffix = []
        if choice.head_init == "label_words":
            suffix = label_word_head(model, tokenizer, label_names)
        TRAINABLE_PARAMETERS[choice.option](model, choice)
        from prompt_tuning import context_budget

        encoding = Encoding(suffix, context_budget(model.llama))
    check_vocabulary(tokenizer, model.llama.config.vocab_size, choice.checkpoint)
    return model, encoding


def prompt_classifier(config, choice: ClassifierChoice, tokenizer, label_names: list[str]):
    """prompting.PromptClassifier on the template (the question, or the model's chat template) with
    the demonstrations; calibrated with --calibrate; trainable for prompt_finetune. Its queries are
    sentence + suffix: the prefix (BOS included) is cached, so encode_examples adds no BOS."""
    from prompting import CalibratedClassifier, PromptClassifier, PromptTemplate, build_prompt, content_free_queries

    if choice.chat_template:
        from chat import ChatTemplate, ChatTemplateError, zero_shot_chat_prompt

        try:
            prefix, suffix = zero_shot_chat_prompt(ChatTemplate.for_tokenizer(tokenizer),
                                                   zero_shot_question(label_names))
        except (ChatTemplateError, ValueError) as error:
            raise InputError(f"--chat_template: {error}") from None
        template = PromptTemplate(suffix=suffix, prefix=prefix)
    else:
        template = PromptTemplate.question(label_names)
    prompt = build_prompt(tokenizer, template, label_names, choice.demonstrations)
    llama = load_backbone(config)
    if choice.option == "prompt":
        from quantize import prepare_for_inference

        prepare_for_inference(llama, choice.dtype, choice.quantize)
    room = prompt.sentence_room(llama.config.max_seq_len)
    if room < 1:
        raise InputError(f"the prompt ({len(prompt.prefix_ids)} prefix tokens with --shots "
                         f"{len(choice.demonstrations)}, {len(prompt.suffix_ids)} after the sentence) leaves no "
                         f"room for a sentence in the model's context of {llama.config.max_seq_len} positions: "
                         "use fewer --shots")
    model = PromptClassifier(llama, prompt)
    if choice.option == "prompt_finetune":
        TRAINABLE_PARAMETERS[choice.peft or "finetune"](model, choice)
    encoding = Encoding(prompt.suffix_ids, room + len(prompt.suffix_ids), bos=False)
    if choice.calibrate:
        model = CalibratedClassifier(model, content_free_queries(tokenizer, prompt))
    return model, encoding


def label_word_head(model, tokenizer, label_names: list[str]) -> list[int]:
    """--head_init label_words: head rows = the label words' output embeddings (wise_ft.py);
    returns the question's ids, which follow every sentence so that the head reads the position
    the zero-shot classifier reads."""
    from wise_ft import init_label_word_head, label_word_ids

    question = zero_shot_question(label_names)
    try:
        init_label_word_head(model.classifier_head, model.llama.output,
                             label_word_ids(tokenizer, label_names, question))
    except ValueError as error:
        raise InputError(f"--head_init label_words: {error}") from None
    return continuation_ids(tokenizer, ".", " " + question)


def check_vocabulary(tokenizer, vocab_size: int, checkpoint) -> None:
    """A tokenizer and a model belong together only if their vocabularies have the same size:
    ids the embedding table lacks crash, and a smaller tokenizer means other words for the same ids."""
    if tokenizer.n_words != vocab_size:
        where = tokenizer.model_path or "the checkpoint's own record"
        raise InputError(f"the tokenizer ({where}) has {tokenizer.n_words} tokens but the model {checkpoint} "
                         f"{vocab_size}: they do not belong together (see --tokenizer)")


# --------------------------------------------------------------------------------------------
# What trains. The training loop trains whatever requires_grad and checkpoints only that, so a
# new parameter-efficient method is one more function here. (Each imports its module inside:
# the course variants without LoRA ship no lora.py.)


def full_finetuning(classifier, choice) -> None:
    """Every parameter trains; with --mixout P each projection is mixed towards its pretrained
    value with probability P at every training step (Lee et al. 2020)."""
    classifier.llama.requires_grad_(True)
    if getattr(choice, "mixout", None):
        from mixout import apply_mixout

        apply_mixout(classifier.llama, choice.mixout)


def lora_adapters(classifier, choice) -> None:
    """Only LoRA adapters on --lora_targets (default: the attention projections) and the head
    train (Hu et al. 2021): apply_lora freezes the backbone around them; the head, outside it,
    keeps training."""
    from lora import apply_lora

    apply_lora(classifier.llama, rank=choice.lora_rank, alpha=choice.lora_alpha,
               targets=getattr(choice, "lora_targets", ClassifierChoice.lora_targets),
               dropout=getattr(choice, "lora_dropout", 0.0))


def ia3_vectors(classifier, choice) -> None:
    """Only the IA3 vectors on keys, values and the feed-forward's inner activation, and the head,
    train (Liu et al. 2022)."""
    from ia3 import apply_ia3

    apply_ia3(classifier.llama)


def soft_prompt(classifier, choice) -> None:
    """Only --n_virtual_tokens input embeddings before every sequence, and the head, train
    (Lester et al. 2021); they start from the zero-shot question's tokens or random ones."""
    from prompt_tuning import apply_prompt_tuning

    try:
        apply_prompt_tuning(classifier, choice.prompt_init_ids)
    except ValueError as error:
        raise InputError(f"--n_virtual_tokens {choice.n_virtual_tokens}: {error}") from None


TRAINABLE_PARAMETERS = {"finetune": full_finetuning, "lora": lora_adapters, "ia3": ia3_vectors,
                        "prompt_tuning": soft_prompt}
