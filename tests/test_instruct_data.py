"""Tests for instruct_data.py: JSON-lines conversations and their errors, classification data
as instructions, the response-only loss mask on SmolLM2's chat template, parsing answers."""

import json
from types import SimpleNamespace

import pytest

from minllama.inference.chat import ChatTemplate
from minllama.instruct.instruct_data import (InstructionDataError, classification_conversations, encode_conversation,
                                             parse_label, read_conversations)


@pytest.fixture(scope="module")
def smollm2_template(smollm2_tokenizer):
    return ChatTemplate.for_tokenizer(smollm2_tokenizer)


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_both_record_shapes(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [
        json.dumps({"instruction": "Say hi.", "response": "Hi!"}),
        "",
        json.dumps({"system": "Be terse.", "instruction": "2+2?", "response": "4"}),
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                 {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}),
    ])
    conversations = read_conversations(path)
    assert conversations[0] == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]
    assert [m["role"] for m in conversations[1]] == ["system", "user", "assistant"]
    assert [m["content"] for m in conversations[2]] == ["a", "b", "c", "d"]
    assert len(read_conversations(path, limit=2)) == 2


@pytest.mark.parametrize("line, expected", [
    ('{"instruction": "x", "response": ', "data.jsonl:2: not valid JSON"),
    ('{"instruction": "x"}', "data.jsonl:2: .*missing or not a string: response"),
    ('["x", "y"]', "data.jsonl:2: expected a JSON object, found list"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "data.jsonl:2: message 0 must be"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "data.jsonl:2: no 'assistant' message"),
])
def test_bad_line_names_file_and_line(tmp_path, line, expected):
    path = write_lines(tmp_path / "data.jsonl", [json.dumps({"instruction": "ok", "response": "ok"}), line])
    with pytest.raises(InstructionDataError, match=expected):
        read_conversations(path)


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(InstructionDataError, match="not found: .*nothing.jsonl"):
        read_conversations(tmp_path / "nothing.jsonl")
    with pytest.raises(InstructionDataError, match="no conversations"):
        read_conversations(write_lines(tmp_path / "blank.jsonl", ["", "  "]))


def test_classification_examples_become_instructions():
    conversation, = classification_conversations([SimpleNamespace(label=1, sentence="A fine film.")], ["bad", "good"])
    assert "one of: bad, good" in conversation[0]["content"] and "A fine film." in conversation[0]["content"]
    assert conversation[1] == {"role": "assistant", "content": "good"}


def test_mask_covers_the_response_and_end_of_turn_only(smollm2_template, smollm2_tokenizer):
    conversation, = classification_conversations([SimpleNamespace(label=0, sentence="Dull and long.")], ["bad", "good"])
    ids, mask = encode_conversation(smollm2_template, smollm2_tokenizer, conversation)
    encode = lambda text: smollm2_tokenizer.encode(text, bos=False, eos=False)  # noqa: E731
    assert ids == encode(smollm2_template.render(conversation))  # the pieces encode as the whole text
    learned = [i for i, m in zip(ids, mask) if m]
    assert learned == encode("bad<|im_end|>")
    first = mask.index(1)  # the prompt before the answer is what the model reads when generating
    assert ids[:first] == encode(smollm2_template.render(conversation[:1], add_generation_prompt=True))
    assert mask[first:] == [1] * len(learned) + [0]  # the newline after <|im_end|> is the template's


def test_mask_on_several_turns(smollm2_template, smollm2_tokenizer):
    conversation = [{"role": "system", "content": "Count."}, {"role": "user", "content": "One?"},
                    {"role": "assistant", "content": "One."}, {"role": "user", "content": "Two?"},
                    {"role": "assistant", "content": "One, two."}]
    ids, mask = encode_conversation(smollm2_template, smollm2_tokenizer, conversation)
    assert len(ids) == len(mask)
    learned = smollm2_tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert learned == "One.One, two."  # <|im_end|> is learned too, but decode leaves it out
    assert sum(mask) == len(smollm2_tokenizer.encode("One.<|im_end|>One, two.<|im_end|>", False, False))


def test_mask_with_the_plain_fallback(smollm2_tokenizer):
    ids, mask = encode_conversation(ChatTemplate(None), smollm2_tokenizer,
                                    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    assert smollm2_tokenizer.decode([i for i, m in zip(ids, mask) if m]) == " Hello\n"
    assert smollm2_tokenizer.decode(ids) == "User: Hi\nAssistant: Hello\n"


def test_parse_label_finds_the_first_label_word():
    names = ["awful", "bad", "average", "good", "excellent"]
    assert parse_label("Good. Not bad at all.", names) == 3
    assert parse_label("I'd say it is BAD, maybe average", names) == 1
    assert parse_label("goodness knows", names) is None  # whole words only
    assert parse_label("", names) is None
    assert parse_label("It was very good", ["good", "very good"]) == 1  # the longest name at a position
