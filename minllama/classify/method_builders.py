"""What the A+ classification methods build, on top of the course's builders.py.

- prompt with --shots, --calibrate or --chat_template: the generalised zero-shot classifier of
  prompting.py (demonstrations in a cached prefix, contextual calibration, the model's chat template);
  --dtype and --quantize lighten its weights (quantize.py).
- ia3, prompt_tuning: the embedding classifier with IA3 vectors (ia3.py) or a soft prompt
  (prompt_tuning.py) training instead of the backbone; lora on --lora_targets with --lora_dropout.
- --head_init label_words (finetune, lora, ia3, prompt_tuning): the head starts as the label words'
  output embeddings, with the zero-shot question after every sentence (wise_ft.py): the untrained
  classifier is then the zero-shot one. --mixout P: finetune with Mixout (mixout.py).
- prompt_finetune: the zero-shot scoring made trainable (prompting.PromptClassifier), the backbone
  trained whole or, with --peft, through LoRA or IA3.
"""

from dataclasses import dataclass, replace

from classifier import (LlamaEmbeddingClassifier, LlamaZeroShotClassifier, continuation_ids, load_backbone,
                        zero_shot_question)
from lora import apply_lora, merge_lora_weights
from minllama.classify.builders import FINETUNING, ClassifierChoice, Encoding, Training, classifier_config
from minllama.inference.chat import ChatTemplate, ChatTemplateError, zero_shot_chat_prompt
from minllama.inference.quantize import prepare_for_inference
from minllama.methods.ia3 import apply_ia3, merge_ia3_weights
from minllama.methods.mixout import apply_mixout
from minllama.methods.prompt_tuning import apply_prompt_tuning, context_budget, prompt_init_ids
from minllama.methods.prompting import (CalibratedClassifier, PromptClassifier, PromptTemplate, build_prompt,
                                        content_free_queries)
from minllama.methods.wise_ft import init_label_word_head, label_word_ids
from minllama.training.data import InputError, check_vocabulary

DEFAULT_LORA_TARGETS = ("compute_query", "compute_key", "compute_value", "compute_output")


@dataclass(frozen=True)
class MethodChoice(ClassifierChoice):
    """The course's choice and every A+ method's settings."""
    dtype: str = "float32"  # prompt: the weights' type, or int8 linear layers (quantize.py)
    quantize: str | None = None
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    lora_dropout: float = 0.0
    n_virtual_tokens: int = 20  # prompt_tuning
    prompt_init: str = "question"  # prompt_tuning: "question" or "random"
    seed: int = 0  # prompt_tuning's random initial tokens
    prompt_init_ids: tuple[int, ...] = ()  # prompt_tuning: set by build_method_classifier from prompt_init
    demonstrations: tuple[tuple[int, str], ...] = ()  # prompt: the K solved examples of --shots
    calibrate: bool = False
    chat_template: bool = False
    peft: str | None = None  # prompt_finetune: "lora" or "ia3" instead of the whole backbone
    head_init: str = "random"  # or "label_words"
    mixout: float | None = None  # finetune

    @property
    def prompted(self) -> bool:
        """Does the prompt option need prompting.py's classifier rather than the plain zero-shot one?"""
        return self.option == "prompt" and bool(self.demonstrations or self.calibrate or self.chat_template)


def finetuning_with_mixout(classifier, choice) -> None:
    """Every parameter trains, each projection mixed towards its pretrained value with probability
    --mixout at every training step (Lee et al. 2020)."""
    FINETUNING.make_trainable(classifier, choice)
    if choice.mixout:
        apply_mixout(classifier.llama, choice.mixout)


def lora_on_targets(classifier, choice) -> None:
    """LoRA adapters on --lora_targets (default: the attention projections), with --lora_dropout."""
    apply_lora(classifier.llama, rank=choice.lora_rank, alpha=choice.lora_alpha, targets=choice.lora_targets,
               dropout=choice.lora_dropout)


def ia3_vectors(classifier, choice) -> None:
    """Only the IA3 vectors on keys, values and the feed-forward's inner activation, and the head,
    train (Liu et al. 2022)."""
    apply_ia3(classifier.llama)


def soft_prompt(classifier, choice) -> None:
    """Only --n_virtual_tokens input embeddings before every sequence, and the head, train
    (Lester et al. 2021); they start from the zero-shot question's tokens or random ones."""
    try:
        apply_prompt_tuning(classifier, choice.prompt_init_ids)
    except ValueError as error:
        raise InputError(f"--n_virtual_tokens {choice.n_virtual_tokens}: {error}") from None


# What trains, for every trained option (and for prompt_finetune's --peft).
TRAININGS = {"finetune": Training("finetune", finetuning_with_mixout),
             "lora": Training("lora", lora_on_targets, adapter_prefix="lora_", merge=merge_lora_weights),
             "ia3": Training("ia3", ia3_vectors, adapter_prefix="ia3_", merge=merge_ia3_weights),
             "prompt_tuning": Training("prompt_tuning", soft_prompt, adapter_prefix="prompt_embeddings")}


def training_for(choice: MethodChoice) -> Training | None:
    """What trains for the choice's option: None for prompt; prompt_finetune's backbone by --peft."""
    if choice.option == "prompt":
        return None
    if choice.option == "prompt_finetune":
        return TRAININGS[choice.peft or "finetune"]
    return TRAININGS[choice.option]


def build_method_classifier(choice: MethodChoice, training: Training | None, tokenizer, label_names: list[str]):
    """The option's classifier and its Encoding (see the module docstring)."""
    config = classifier_config(choice)
    if choice.option == "prompt" and not choice.prompted:
        model = LlamaZeroShotClassifier(config, tokenizer, label_names)
        prepare_for_inference(model.llama, choice.dtype, choice.quantize)
        encoding = Encoding(model.question_ids, model.llama.config.max_seq_len - model.max_label_len)
    elif choice.option in ("prompt", "prompt_finetune"):
        model, encoding = prompt_classifier(config, choice, training, tokenizer, label_names)
    else:
        if choice.option == "prompt_tuning":
            text = zero_shot_question(label_names) if choice.prompt_init == "question" else None
            choice = replace(choice, prompt_init_ids=tuple(prompt_init_ids(tokenizer, choice.n_virtual_tokens, text,
                                                                           choice.seed)))
        model = LlamaEmbeddingClassifier(config)
        suffix = []
        if choice.head_init == "label_words":
            suffix = label_word_head(model, tokenizer, label_names)
        training.make_trainable(model, choice)
        encoding = Encoding(suffix, context_budget(model.llama))
    check_vocabulary(tokenizer, model.llama.config.vocab_size, choice.checkpoint)
    return model, encoding


def prompt_classifier(config, choice: MethodChoice, training: Training | None, tokenizer,
                      label_names: list[str]):
    """prompting.PromptClassifier on the template (the question, or the model's chat template) with
    the demonstrations; calibrated with --calibrate; trainable for prompt_finetune. Its queries are
    sentence + suffix: the prefix (BOS included) is cached, so encode_examples adds no BOS."""

    if choice.chat_template:
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
        prepare_for_inference(llama, choice.dtype, choice.quantize)
    room = prompt.sentence_room(llama.config.max_seq_len)
    if room < 1:
        raise InputError(f"the prompt ({len(prompt.prefix_ids)} prefix tokens with --shots "
                         f"{len(choice.demonstrations)}, {len(prompt.suffix_ids)} after the sentence) leaves no "
                         f"room for a sentence in the model's context of {llama.config.max_seq_len} positions: "
                         "use fewer --shots")
    model = PromptClassifier(llama, prompt)
    if choice.option == "prompt_finetune":
        training.make_trainable(model, choice)
    encoding = Encoding(prompt.suffix_ids, room + len(prompt.suffix_ids), bos=False)
    if choice.calibrate:
        model = CalibratedClassifier(model, content_free_queries(tokenizer, prompt))
    return model, encoding


def label_word_head(model, tokenizer, label_names: list[str]) -> list[int]:
    """--head_init label_words: head rows = the label words' output embeddings (wise_ft.py);
    returns the question's ids, which follow every sentence so that the head reads the position
    the zero-shot classifier reads."""
    question = zero_shot_question(label_names)
    try:
        init_label_word_head(model.classifier_head, model.llama.output,
                             label_word_ids(tokenizer, label_names, question))
    except ValueError as error:
        raise InputError(f"--head_init label_words: {error}") from None
    return continuation_ids(tokenizer, ".", " " + question)
