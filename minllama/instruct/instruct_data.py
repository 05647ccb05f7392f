"""Instruction-tuning data: conversations rendered through the chat template, with a loss mask.

Instruction tuning (Wei et al. 2022, "Finetuned language models are zero-shot learners";
Ouyang et al. 2022, Sec. 3) trains the language-model loss on (instruction, response) pairs.
The model should learn to *answer*, not to write instructions, so only the response tokens
count: the loss mask is 1 on the assistant's words and on the end-of-turn marker that closes
them (so the model learns to stop), 0 on everything the user or the template wrote.

Sources: a JSON-lines file of `{"instruction": ..., "response": ...}` (optionally "system") or
`{"messages": [{"role": ..., "content": ...}, ...]}` lines, and the classification data sets
(SST, CFIMDB) turned into instructions whose response is the label word. After tuning, a
generated answer is read back as the first label word it names (parse_label).
"""

import json
import re
from pathlib import Path

from minllama.inference.chat import ChatTemplate, ChatTemplateError

ROLES = ("system", "user", "assistant")


class InstructionDataError(ValueError):
    """A data file that cannot be used; the message names the file and line."""


def _conversation(record, where: str) -> list[dict]:
    """One JSON-lines record as a list of {"role", "content"} messages."""
    if not isinstance(record, dict):
        raise InstructionDataError(f"{where}: expected a JSON object, found {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise InstructionDataError(f"{where}: 'messages' must be a non-empty list of messages")
        for i, message in enumerate(messages):
            if (not isinstance(message, dict) or message.get("role") not in ROLES
                    or not isinstance(message.get("content"), str)):
                raise InstructionDataError(f"{where}: message {i} must be an object with 'role' (one of "
                                           f"{', '.join(ROLES)}) and a string 'content', found {message!r:.80}")
        if not any(message["role"] == "assistant" for message in messages):
            raise InstructionDataError(f"{where}: no 'assistant' message: there is no response to learn")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    missing = [key for key in ("instruction", "response") if not isinstance(record.get(key), str)]
    if missing:
        raise InstructionDataError(f"{where}: expected 'instruction' and 'response' strings or a 'messages' "
                                   f"list; missing or not a string: {', '.join(missing)}")
    system = [{"role": "system", "content": record["system"]}] if isinstance(record.get("system"), str) else []
    return system + [{"role": "user", "content": record["instruction"]},
                     {"role": "assistant", "content": record["response"]}]


def read_conversations(path, limit: int | None = None) -> list[list[dict]]:
    """The conversations of a JSON-lines file (blank lines are skipped), the first `limit` if set.
    A line that is not JSON, or lacks the fields, is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InstructionDataError(f"instruction data file not found: {path}")
    conversations = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: without the byte-order mark Windows editors write
        for number, line in enumerate(f, start=1):
            if limit is not None and len(conversations) == limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InstructionDataError(f"{path}:{number}: not valid JSON: {error.msg} "
                                           f"(column {error.colno})") from None
            conversations.append(_conversation(record, f"{path}:{number}"))
    if not conversations:
        raise InstructionDataError(f"{path}: the file has no conversations")
    return conversations


def classification_instruction(sentence: str, label_names: list[str]) -> str:
    """The question a sentiment example becomes: the choices, then the review."""
    return (f"Classify the sentiment of this review as one of: {', '.join(label_names)}. "
            f"Answer with one word.\n\nReview: {sentence}")


def classification_conversations(examples, label_names: list[str]) -> list[list[dict]]:
    """SST/CFIMDB examples (with .sentence and .label) as instructions answered by the label word."""
    return [[{"role": "user", "content": classification_instruction(example.sentence, label_names)},
             {"role": "assistant", "content": label_names[example.label]}] for example in examples]


def encode_conversation(template: ChatTemplate, tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of a conversation rendered through the template; the mask is 1 on
    every assistant message's tokens and on the end-of-turn marker after them, 0 elsewhere.

    Each assistant message is found by rendering the conversation up to it with the generation
    prompt (what the model reads before answering) and up to its end: the difference is the
    answer. The pieces are encoded separately, so the answer's tokens are the ones the model
    produces when it generates after that prompt."""
    ids, mask, done = [], [], ""
    for end in [i for i, m in enumerate(messages) if m["role"] == "assistant"] + [None]:
        if end is None:  # what the template writes after the last answer
            pieces = [(template.render(messages), 0)]
        else:
            before = template.render(messages[:end], add_generation_prompt=True)
            through = template.render(messages[:end + 1])
            if not through.startswith(before):
                raise ChatTemplateError(f"{template.origin}: the generation prompt is not how the template "
                                        "starts an assistant message, so its answer cannot be masked")
            answer = through[len(before):]
            marker = answer.find(template.end_of_turn, len(messages[end]["content"])) if template.end_of_turn else -1
            cut = len(answer) if marker < 0 else marker + len(template.end_of_turn)
            pieces = [(before, 0), (through[:len(before) + cut], 1), (through, 0)]
        for text, learn in pieces:
            if not text.startswith(done):
                raise ChatTemplateError(f"{template.origin}: rendering more messages changes the earlier "
                                        "text, so the conversation cannot be split into turns")
            new = tokenizer.encode(text[len(done):], bos=not done, eos=False) if len(text) > len(done) else []
            ids += new
            mask += [learn] * len(new)
            done = text
    return ids, mask


def parse_label(answer: str, label_names: list[str]) -> int | None:
    """The id of the first label word named in a generated answer (whole words, any case), or
    None when it names none. At one position the longest name wins ("very good" over "good")."""
    names = sorted(set(label_names), key=len, reverse=True)
    match = re.search(r"\b(" + "|".join(re.escape(name) for name in names) + r")\b", answer, re.IGNORECASE)
    if match is None:
        return None
    found = match.group(1).lower()
    return next(i for i, name in enumerate(label_names) if name.lower() == found)
