"""`--option instruct_tune`: instruction tuning with the loss on the answers only, then
classification two ways.

Instruction tuning (Wei et al. 2022, Sec. 2; Ouyang et al. 2022, Sec. 3.5) trains the plain
language-model loss on conversations rendered through the model's chat template, but counts only
the tokens the assistant says (instruct_data.encode_conversation's loss mask): the model learns to
answer, not to write questions. With `ids` a rendered conversation and `mask` its loss mask,

    inputs  = ids[:-1]
    targets = ids[1:] where mask[1:] is 1, IGNORE elsewhere     (the next token, if it is an answer's)

so the position before each answer token is trained to predict it, and the instruction's tokens,
the template's markers and the padding take no part in the loss (objectives.LanguageModelLoss).
The whole model trains, or only LoRA (Hu et al. 2021) or IA3 (Liu et al. 2022) adapters.

The data are a JSON-lines file of instructions, or the classification training split asked as
instructions ("Classify the sentiment of this review as one of: bad, good. ...") answered by the
label word. After training the dev and test splits are classified, in the same format, by
- scoring the label words as the start of the assistant's answer (the zero-shot scoring of
  prompting.PromptClassifier on the chat prompt): the prediction files and `dev acc :: ...`;
- generating the answer greedily and taking the first label word it names (instruct_data.parse_label),
  for comparison: what a user of the chat would get. Answers that name no label count as wrong.
"""

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from llama import load_pretrained
from minllama.inference.chat import ChatTemplate, stop_condition
from minllama.instruct.instruct_data import (classification_conversations, classification_instruction,
                                             encode_conversation, parse_label)
from minllama.methods.prompting import Prompt, PromptClassifier
from minllama.training.data import InputError, check_vocabulary, collate, epoch_rows, length_sorted_batches
from minllama.training.loop import Distributed, LoopSettings, TrainingDiverged, autocast, train
from minllama.training.objectives import IGNORE, LanguageModelLoss
from minllama.training.run_record import check_folder_free, text_sha256
from minllama.training.supervised import (KeptCheckpointHooks, Split, load_checkpoint, predict, report_split,
                                          write_predictions)
from support.adapters import count_parameters
from support.checkpoints import load_torch_file

ANSWER_TOKENS = 16  # generate-and-parse: a label word comes first in a short answer


@dataclass(frozen=True)
class InstructionTuning:
    """Everything one `--option instruct_tune` command needs, resolved and checked by commands.py."""
    checkpoint: Path
    model_overrides: dict  # LlamaConfig fields the command line sets (norm_type, dropout)
    peft: str | None  # None: full fine-tuning; "lora" or "ia3": only the adapters train
    lora_rank: int
    lora_alpha: float
    conversations: list[list[dict]] | None  # from --instructions; None: the classification training split
    instructions_source: str  # where the training conversations come from, for the messages
    label_names: list[str]
    train: Split | None  # the classification training split, when it is the data
    splits: dict[str, Split]  # "dev" (picks the best checkpoint), maybe "test": classified after training
    batch_size: int
    max_sentence_len: int | None
    epochs: int
    settings: LoopSettings
    seed: int
    checkpoint_out: Path
    overwrite: bool = False  # replace a checkpoint_out of other settings (else refused)


@dataclass(frozen=True)
class InstructRecord:
    """The settings of an instruction-tuning run (run_record.py), kept in its checkpoint: a new run
    of other settings does not replace it without --overwrite."""
    checkpoint: str
    instructions_sha256: str  # of the conversations, or of the training split asked as instructions
    peft: str | None
    lora_rank: int
    lora_alpha: float
    epochs: int
    lr: float
    batch_size: int
    seed: int
    max_sentence_len: int | None

    @classmethod
    def of(cls, run: "InstructionTuning") -> "InstructRecord":
        texts = ([json.dumps(messages, sort_keys=True) for messages in run.conversations] if run.conversations
                 is not None else [f"{e.label} ||| {e.sentence}" for e in run.train.examples])
        return cls(str(run.checkpoint), text_sha256(texts), run.peft, run.lora_rank, run.lora_alpha, run.epochs,
                   run.settings.lr, run.batch_size, run.seed, run.max_sentence_len)


def build_model(run: InstructionTuning):
    """The base Llama with what trains marked by requires_grad: everything, or the adapters only."""
    llama = load_pretrained(run.checkpoint, **run.model_overrides)
    if run.peft == "lora":
        from lora import apply_lora

        apply_lora(llama, rank=run.lora_rank, alpha=run.lora_alpha)
    elif run.peft == "ia3":
        from minllama.methods.ia3 import apply_ia3

        apply_ia3(llama)
    else:
        llama.requires_grad_(True)
    return llama


# --------------------------------------------------------------------------------------------
# Conversations -> training examples


def shifted(ids: list[int], mask: list[int]) -> tuple[list[int], list[int]]:
    """(inputs, targets) of one conversation: each position predicts the next token, which counts
    only if it is an answer's (mask 1); every other target is IGNORE."""
    return ids[:-1], [token if learn else IGNORE for token, learn in zip(ids[1:], mask[1:])]


def cut_sentence(tokenizer, sentence: str, max_tokens: int | None) -> str:
    """The sentence's first max_tokens tokens, as text (the instruction around it is never cut)."""
    ids = tokenizer.encode(sentence, bos=False, eos=False)
    return sentence if max_tokens is None or len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def fit_sentence(tokenizer, sentence: str, max_tokens: int | None, encode, room: int, where: str, length=len):
    """encode(text) for the sentence, cut (to max_tokens, then further) until its length(...) is at
    most `room` tokens; returns (encoded, whether it was cut to fit)."""
    text = first = cut_sentence(tokenizer, sentence, max_tokens)
    for _ in range(4):  # cutting k tokens shortens the whole by about k; a merge at the edge may need one more try
        encoded = encode(text)
        excess = length(encoded) - room
        if excess <= 0:
            return encoded, text != first
        n = len(tokenizer.encode(text, bos=False, eos=False))
        if n == 0:
            break
        text = cut_sentence(tokenizer, text, max(0, n - excess))
    raise InputError(f"{where}: the instruction around the sentence does not fit the model's context ({room} tokens)")


def training_examples(run: InstructionTuning, template: ChatTemplate, tokenizer, context: int):
    """(inputs, targets) lists of every training conversation that fits the context and has an
    answer to learn; prints how many were cut or left out."""
    if run.conversations is not None:
        encoded = [encode_conversation(template, tokenizer, messages) for messages in run.conversations]
        too_long = sum(len(ids) > context + 1 for ids, _ in encoded)
        kept = [(ids, mask) for ids, mask in encoded if len(ids) <= context + 1 and any(mask[1:])]
        if len(kept) < len(encoded):
            print(f"note: left out {len(encoded) - len(kept)} of {len(encoded)} conversations of "
                  f"{run.instructions_source} ({too_long} longer than the model's context of {context} tokens)")
    else:
        kept, n_cut = [], 0
        for example in run.train.examples:
            def encode(text, example=example):
                return encode_conversation(template, tokenizer,
                                           classification_conversations([replace(example, sentence=text)],
                                                                        run.label_names)[0])
            pair, cut = fit_sentence(tokenizer, example.sentence, run.max_sentence_len, encode, context + 1,
                                     str(run.train.path), length=lambda pair: len(pair[0]))
            kept.append(pair)
            n_cut += cut
        if n_cut:
            print(f"note: {n_cut} of {len(kept)} training sentences were cut to fit the model's context")
    if not kept:
        raise InputError(f"{run.instructions_source}: no conversation fits the model's context ({context} tokens)")
    return [shifted(ids, mask) for ids, mask in kept]


def instruction_batch(examples: list[tuple[list[int], list[int]]], pad_id: int, device) -> dict:
    """input_ids, attention_mask and targets (B, T), right-padded by data.collate; padding's targets
    are IGNORE (a row's inputs and targets have the same length, so both pad to the same T)."""
    input_ids, attention_mask = collate([ids for ids, _ in examples], pad_id, device)
    targets, _ = collate([targets for _, targets in examples], IGNORE, device)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "targets": targets}


def epoch_batches(examples, batch_size: int, pad_id: int, device, seed: int):
    """batch_at(step): the rows of data.epoch_rows as padded instruction batches."""
    rows_at = epoch_rows([len(ids) for ids, _ in examples], batch_size, seed)
    return lambda step: instruction_batch([examples[i] for i in rows_at(step)], pad_id, device)


# --------------------------------------------------------------------------------------------
# Classifying with the tuned model


def label_answer_ids(template: ChatTemplate, tokenizer, label_names: list[str]) -> list[list[int]]:
    """Each label word's tokens as the assistant's answer, exactly as training encodes them: the
    first learned tokens of a conversation answered by the word that spell the word (the rest of
    the learned tokens are the end-of-turn marker)."""
    label_ids = []
    for name in label_names:
        conversation = [{"role": "user", "content": "?"}, {"role": "assistant", "content": name}]
        ids, mask = encode_conversation(template, tokenizer, conversation)
        learned = [token for token, learn in zip(ids, mask) if learn]
        length = next((n for n in range(1, len(learned) + 1) if name in tokenizer.decode(learned[:n])), None)
        if length is None:
            raise InputError(f"the label {name!r} does not come back from the tokens of its answer")
        label_ids.append(learned[:length])
    return label_ids


def classification_prompts(split: Split, template: ChatTemplate, tokenizer, label_names: list[str],
                           max_sentence_len: int | None, room: int) -> list[list[int]]:
    """Every example as the training format's prompt, up to the assistant's answer (BOS included)."""
    def encode(text):
        message = {"role": "user", "content": classification_instruction(text, label_names)}
        return tokenizer.encode(template.render([message], add_generation_prompt=True), bos=True, eos=False)

    prompts, n_cut = [], 0
    for example in split.examples:
        ids, cut = fit_sentence(tokenizer, example.sentence, max_sentence_len, encode, room, str(split.path))
        prompts.append(ids)
        n_cut += cut
    if n_cut:
        print(f"note: {n_cut} of {len(prompts)} {split.name} sentences were cut to fit the model's context")
    return prompts


def label_word_scorer(llama, label_ids: list[list[int]]) -> PromptClassifier:
    """The zero-shot scorer on the whole chat prompt (no cached prefix, no suffix). PromptClassifier
    freezes the model it wraps: what trains is unfrozen again, so the scorer can run between epochs."""
    trainable = [p for p in llama.parameters() if p.requires_grad]
    scorer = PromptClassifier(llama, Prompt(prefix_ids=[], suffix_ids=[], label_ids=label_ids))
    for p in trainable:
        p.requires_grad_(True)
    return scorer


@torch.no_grad()
def generate_answers(llama, tokenizer, template: ChatTemplate, prompts: list[list[int]], batch_size: int,
                     device, desc: str) -> list[str]:
    """The greedy answer to every prompt (left-padded batches), up to the end of the turn or ANSWER_TOKENS."""
    llama.eval()
    stop_ids, stop_text = stop_condition(template, tokenizer)
    answers = [""] * len(prompts)
    for batch in tqdm(length_sorted_batches([len(p) for p in prompts], batch_size), desc=f"generate {desc}"):
        longest = max(len(prompts[i]) for i in batch)
        input_ids = torch.tensor([[tokenizer.pad_id] * (longest - len(prompts[i])) + prompts[i] for i in batch],
                                 device=device)
        attention_mask = torch.tensor([[0] * (longest - len(prompts[i])) + [1] * len(prompts[i]) for i in batch],
                                      device=device)
        with autocast(device):
            tokens = llama.generate(input_ids, ANSWER_TOKENS, temperature=0.0, epsilon=0.0, stop_tokens=stop_ids,
                                    attention_mask=attention_mask)
        for row, i in enumerate(batch):
            new = tokens[row, longest:].tolist()
            new = new[:next((k for k, token in enumerate(new) if token in stop_ids), len(new))]
            text = tokenizer.decode(new)
            answers[i] = (text.split(stop_text, 1)[0] if stop_text else text).strip()
    return answers


def score_answers(split: Split, answers: list[str], label_names: list[str]) -> dict:
    """Generate-and-parse: accuracy (an answer naming no label is wrong) and how many name none."""
    parsed = [parse_label(answer, label_names) for answer in answers]
    no_label = sum(p is None for p in parsed)
    result = {"no_label": no_label, "examples": len(answers), "answers": answers[:5]}
    if split.placeholder_labels:
        print(f"{split.name} generated answers: {no_label} of {len(answers)} name no label")
        return result
    accuracy = sum(p == e.label for p, e in zip(parsed, split.examples)) / len(answers)
    print(f"{split.name} generated acc :: {accuracy:.3f} (generate and parse the first label word; "
          f"{no_label} of {len(answers)} answers name no label)")
    return {**result, "accuracy": accuracy}


# --------------------------------------------------------------------------------------------
# Training


class InstructionHooks(KeptCheckpointHooks):
    """After every epoch (or --eval_every steps): the dev accuracy of the label-word scoring picks
    the checkpoint to keep (without dev labels, the latest); prints the epoch's line."""

    def __init__(self, llama, scorer, dev: Split | None, dev_prompts, batch_size: int, pad_id: int, device,
                 steps_per_epoch: int, checkpoint_path: Path, info: dict, dist: Distributed):
        super().__init__(llama, llama.config, steps_per_epoch, checkpoint_path, info, dist)
        self.scorer, self.dev, self.dev_prompts = scorer, dev, dev_prompts
        self.batch_size, self.pad_id, self.device = batch_size, pad_id, device
        self.scored = dev is not None and not dev.placeholder_labels
        self.metric = "accuracy" if self.scored else "step"
        self.latest_log_probs = self.best_log_probs = None  # dev's label scores, to predict dev without a rerun

    def evaluate(self, model, step):
        if not self.scored:
            return {"step": step}
        log_probs = self.latest_log_probs = predict(self.scorer, self.dev_prompts, self.batch_size, self.pad_id,
                                                    self.device, "dev")
        gold = torch.tensor([e.label for e in self.dev.examples])
        return {"accuracy": (log_probs.argmax(-1) == gold).float().mean().item(), "step": step}

    def on_evaluation(self, state, metrics, improved, optimizer):
        record = self.record(state, dev_acc=metrics.get("accuracy"))
        self.keep_if_improved(state, record, improved)
        if improved:
            self.best_log_probs = self.latest_log_probs
        if self.dist.is_main:
            dev = f", dev acc :: {record['dev_acc']:.3f} (label words)" if self.scored else ""
            print(f"epoch {record['epoch']}, step {state.step}: train loss :: {record['train_loss']:.3f}{dev}, "
                  f"time :: {record['seconds']:.1f}s")


def run_instruction_tuning(run: InstructionTuning, tokenizer, device, dist: Distributed) -> dict:
    """Encode, train, keep the best checkpoint, classify dev and test both ways; returns the summary."""
    record = InstructRecord.of(run)
    earlier = {*run.checkpoint_out.parent.glob("instruct_tune-*.pt"), run.checkpoint_out}  # another --lr: another name
    for path in sorted(p for p in earlier if p.is_file() and not run.overwrite):
        recorded = load_torch_file(path, mmap=True).get("run_record", {}).get("settings")
        check_folder_free(recorded, record, path, "instruction-tuning", resumable=False)
    llama = build_model(run).to(device)
    check_vocabulary(tokenizer, llama.config.vocab_size, run.checkpoint)
    template = ChatTemplate.for_tokenizer(tokenizer)
    if template.is_fallback and dist.is_main:
        print("note: this model has no chat template; instructions use a plain 'Role: text' format")
    context = llama.config.max_seq_len
    label_ids = label_answer_ids(template, tokenizer, run.label_names) if run.label_names else []
    room = context - max([ANSWER_TOKENS, *map(len, label_ids)])
    prompts = {name: classification_prompts(split, template, tokenizer, run.label_names, run.max_sentence_len, room)
               for name, split in run.splits.items()}
    examples = training_examples(run, template, tokenizer, context)
    scorer = label_word_scorer(llama, label_ids).to(device) if label_ids else None
    counted = count_parameters(llama)
    n_targets = sum(t != IGNORE for _, targets in examples for t in targets)
    if dist.is_main:
        print(f"instruction tuning on {len(examples)} conversations of {run.instructions_source} "
              f"({n_targets:,} answer tokens learned, of {sum(len(ids) for ids, _ in examples):,}); "
              f"{counted}")

    steps_per_epoch = math.ceil(len(examples) / run.batch_size)
    settings = replace(run.settings, max_steps=run.settings.max_steps or run.epochs * steps_per_epoch,
                       eval_every=run.settings.eval_every or steps_per_epoch)
    info = {"option": "instruct_tune", "label_names": run.label_names,
            "tuning": {"checkpoint": str(run.checkpoint), "model_overrides": run.model_overrides, "peft": run.peft,
                       "lora_rank": run.lora_rank, "lora_alpha": run.lora_alpha},
            "run_record": {"settings": asdict(record)}}
    dev = run.splits.get("dev")
    hooks = InstructionHooks(llama, scorer, dev, prompts.get("dev"), run.batch_size, tokenizer.pad_id, device,
                             steps_per_epoch, run.checkpoint_out, info, dist)
    batch_at = epoch_batches(examples, run.batch_size, tokenizer.pad_id, device, run.seed)
    try:
        train(llama, LanguageModelLoss(), batch_at, settings, hooks, device, dist)
    except TrainingDiverged as error:
        raise TrainingDiverged(f"{error}; {hooks.kept()}") from None
    dist.barrier()  # rank 0 has written the checkpoint
    best_epoch = load_checkpoint(run.checkpoint_out, llama)["epoch"]
    summary = {"option": "instruct_tune", "checkpoint": run.checkpoint, "device": str(device), "peft": run.peft,
               "instructions": run.instructions_source, "train_conversations": len(examples),
               "answer_tokens": n_targets, "trainable_parameters": counted.trainable,
               "total_parameters": counted.total, "trainable_fraction": counted.trainable_fraction,
               "chat_template": not template.is_fallback,
               "epochs": hooks.history, "best_epoch": best_epoch, "checkpoint_out": run.checkpoint_out}
    if not dist.is_main:
        return summary
    print(f"reloaded the {'best-dev' if hooks.scored else 'last'} checkpoint {run.checkpoint_out} (epoch {best_epoch})")
    for name, split in run.splits.items():
        log_probs = hooks.best_log_probs if name == "dev" else None  # scored when its checkpoint was kept
        if log_probs is None:
            log_probs = predict(scorer, prompts[name], run.batch_size, tokenizer.pad_id, device, name)
        write_predictions(split.predictions_out, split.examples, log_probs.argmax(-1).tolist())
        print(f"wrote {split.predictions_out}")
        summary[name] = {"data": split.path, "predictions": split.predictions_out,
                         **report_split(split, log_probs, len(run.label_names))}
        answers = generate_answers(llama, tokenizer, template, prompts[name], run.batch_size, device, name)
        summary[name]["generated"] = score_answers(split, answers, run.label_names)
    return summary
