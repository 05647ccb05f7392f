"""Tests for chat.py: templates render as transformers renders them, errors name the template's
line, the zero-shot prompt puts the sentence in a user turn, and the chat loop streams whole
characters, stops at the end-of-turn token and crops its history. The loop's own logic runs on a
scripted stand-in for the model (fast); one test runs SmolLM2 for a few greedy tokens."""

import io
from types import SimpleNamespace

import pytest
import torch

from classifier import zero_shot_question
from minllama.inference.chat import (PLAIN_TEMPLATE, ChatTemplate, ChatTemplateError, fit_to_context, run_chat,
                                     stop_condition, stream_reply, zero_shot_chat_prompt)
from testkit import require_module
from tokenizer import Tokenizer

CONVERSATION = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Bonjour, ça va ? 你好"},
                {"role": "assistant", "content": "Oui, merci."},
                {"role": "user", "content": "And <b>now</b>?"}]

# Uses what transformers' environment provides beyond plain Jinja: tojson keeping non-ASCII and
# HTML as they are, loop controls, trim_blocks/lstrip_blocks, raise_exception, bos/eos tokens.
FEATURE_TEMPLATE = """{{ bos_token }}
{% for message in messages %}
    {% if message.role not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message.role) }}
    {% endif %}
    {% if message.role == 'system' %}{% continue %}{% endif %}
[{{ message.role }}] {{ message.content | tojson }}
{% endfor %}
{% if add_generation_prompt %}[assistant] {% endif %}"""


@pytest.fixture(scope="module")
def smollm2_template(smollm2_tokenizer):
    return ChatTemplate.for_tokenizer(smollm2_tokenizer)


def transformers_render(source, messages, add_generation_prompt, **tokens):
    utils = require_module("transformers.utils.chat_template_utils")
    rendered, _ = utils.render_jinja_template(conversations=[messages], chat_template=source,
                                              add_generation_prompt=add_generation_prompt, **tokens)
    return rendered[0]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_smollm2_template_renders_as_transformers(smollm2_template, add_generation_prompt):
    assert "{% for message in messages %}" in smollm2_template.source  # the GGUF file's own template
    for messages in (CONVERSATION, CONVERSATION[1:]):  # without a system message it adds its own
        expected = transformers_render(smollm2_template.source, messages, add_generation_prompt)
        assert smollm2_template.render(messages, add_generation_prompt) == expected


def test_sandbox_helpers_render_as_transformers():
    template = ChatTemplate(FEATURE_TEMPLATE, bos_token="<s>", eos_token="</s>")
    for generation_prompt in (False, True):
        expected = transformers_render(FEATURE_TEMPLATE, CONVERSATION, generation_prompt,
                                       bos_token="<s>", eos_token="</s>")
        assert template.render(CONVERSATION, generation_prompt) == expected
    assert '"Bonjour, ça va ? 你好"' in template.render(CONVERSATION)


def test_template_cannot_reach_python_internals():
    with pytest.raises(ChatTemplateError, match="SecurityError: access to attribute '__class__'"):
        ChatTemplate("{{ messages.__class__.__mro__ }}")


def test_syntax_error_names_the_line():
    with pytest.raises(ChatTemplateError) as error:
        ChatTemplate("{{ bos_token }}\n{% for message in %}{{ message }}{% endfor %}", origin="model.gguf")
    assert "model.gguf, line 2: TemplateSyntaxError" in str(error.value)
    assert "{% for message in %}" in str(error.value)  # the template's own source line


def test_render_error_names_the_line_and_message():
    template = ChatTemplate(FEATURE_TEMPLATE)
    with pytest.raises(ChatTemplateError) as error:
        template.render([{"role": "tool", "content": "x"}])
    assert "line 4: TemplateError: unknown role tool" in str(error.value)
    assert "raise_exception('unknown role '" in str(error.value)


def test_end_of_turn_of_chatml_is_one_stop_token(smollm2_template, smollm2_tokenizer):
    assert smollm2_template.end_of_turn == "<|im_end|>"
    stop_ids, stop_text = stop_condition(smollm2_template, smollm2_tokenizer)
    assert stop_ids == {smollm2_tokenizer.eos_id, smollm2_tokenizer.encode("<|im_end|>", False, False)[0]}
    assert stop_text is None


def test_end_of_turn_found_from_other_templates():
    llama2 = "{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]" \
             "{% else %} {{ m.content }} {{ eos_token }}{% endif %}{% endfor %}"
    assert ChatTemplate(llama2, eos_token="</s>").end_of_turn == "</s>"
    assert ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}", eos_token="</s>").end_of_turn == "</s>"
    assert ChatTemplate(None).end_of_turn == "\n"  # the plain fallback: one line per turn


def test_model_without_template_falls_back(tokenizer_model_path):
    template = ChatTemplate.for_tokenizer(Tokenizer(tokenizer_model=tokenizer_model_path))
    assert template.is_fallback and template.source == PLAIN_TEMPLATE
    assert template.render(CONVERSATION[:2], add_generation_prompt=True) == \
        "System: Be brief.\nUser: Bonjour, ça va ? 你好\nAssistant:"


def test_zero_shot_prompt_asks_in_a_user_turn(smollm2_template, smollm2_tokenizer):
    question = zero_shot_question(["bad", "good"])
    prefix, suffix = zero_shot_chat_prompt(smollm2_template, question)
    sentence = "A gripping, funny film."
    expected = smollm2_template.render([{"role": "user", "content": sentence + " Is this movie bad or good?"}],
                                       add_generation_prompt=True) + "This movie is"
    assert prefix + sentence + suffix == expected
    # Encoded in three parts (prefix and suffix once, the sentence per example) gives the same ids.
    encode = lambda text: smollm2_tokenizer.encode(text, bos=False, eos=False)  # noqa: E731
    assert encode(prefix) + encode(sentence) + encode(suffix) == encode(expected)


def test_zero_shot_prompt_needs_the_content_unchanged():
    shouting = ChatTemplate("{% for m in messages %}{{ m.content | upper }}{% endfor %}")
    with pytest.raises(ChatTemplateError, match="unchanged"):
        zero_shot_chat_prompt(shouting, zero_shot_question(["bad", "good"]))


class ScriptedModel:
    """Stands in for a Llama: each reply is a fixed token sequence (one-hot logits), so the chat
    loop's streaming, stopping and cropping are tested without running a network."""

    def __init__(self, reply_ids, vocab_size, max_seq_len=8192):
        self.reply_ids, self.vocab_size = reply_ids, vocab_size
        self.config = SimpleNamespace(max_seq_len=max_seq_len)
        self.device = torch.device("cpu")
        self.prompts = []  # the prompt ids of every reply

    def new_kv_cache(self, batch_size, max_len):
        self.step = 0
        return []

    def __call__(self, tokens, kv_cache):
        if self.step == 0:
            self.prompts.append(tokens[0].tolist())
        logits = torch.zeros(1, 1, self.vocab_size)
        logits[0, 0, self.reply_ids[min(self.step, len(self.reply_ids) - 1)]] = 100.0  # certain at any temperature
        self.step += 1
        return logits, None


def test_stream_prints_whole_characters_and_stops_at_end_of_turn(smollm2_template, smollm2_tokenizer):
    reply = "Café 東京 ok"
    ids = smollm2_tokenizer.encode(reply + "<|im_end|> never shown", bos=False, eos=False)
    assert any("\ufffd" in smollm2_tokenizer.decode([i]) for i in ids)  # some tokens are part-characters
    model = ScriptedModel(ids, smollm2_tokenizer.n_words)
    stop_ids, stop_text = stop_condition(smollm2_template, smollm2_tokenizer)
    pieces = list(stream_reply(model, smollm2_tokenizer, [1, 2, 3], 50, stop_ids, stop_text, temperature=0.0))
    assert "".join(pieces) == reply
    assert len(pieces) > 3 and not any("\ufffd" in piece for piece in pieces)


def test_stream_holds_back_a_text_stop(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("one line\nUser: next", bos=False, eos=False)
    model = ScriptedModel(ids, smollm2_tokenizer.n_words)
    pieces = list(stream_reply(model, smollm2_tokenizer, [1], 50, {smollm2_tokenizer.eos_id}, "\nUser:",
                               temperature=0.0))
    assert "".join(pieces) == "one line" and not any("\n" in piece for piece in pieces)


@pytest.mark.slow
def test_stream_matches_greedy_generate(smollm2, smollm2_tokenizer, smollm2_template):
    prompt = smollm2_template.render([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True)
    prompt_ids = smollm2_tokenizer.encode(prompt, bos=False, eos=False)
    expected = smollm2.generate(torch.tensor([prompt_ids]), 8, temperature=0.0)[0, len(prompt_ids):]
    streamed = "".join(stream_reply(smollm2, smollm2_tokenizer, prompt_ids, 8, temperature=0.0))
    assert streamed == smollm2_tokenizer.decode(expected)


def test_one_message_is_answered_once(smollm2_tokenizer, capsys):
    model = ScriptedModel(smollm2_tokenizer.encode("Paris.<|im_end|>", False, False), smollm2_tokenizer.n_words)
    answer = run_chat(model, smollm2_tokenizer, message="Capital of France?", system="Answer in one word.")
    assert answer == "Paris." and capsys.readouterr().out == "Paris.\n"
    prompt = smollm2_tokenizer.decode(model.prompts[0])
    assert "Answer in one word." in prompt and "SmolLM" not in prompt  # our system message replaces the default


def test_interactive_loop_keeps_history_and_crops_it(smollm2_tokenizer, capsys):
    model = ScriptedModel(smollm2_tokenizer.encode("Fine, thanks.<|im_end|>", False, False),
                          smollm2_tokenizer.n_words, max_seq_len=70)
    lines = io.StringIO("first question here\n\nsecond question\nthird question\n/exit\nnever read\n")
    history = run_chat(model, smollm2_tokenizer, system="Be kind.", max_new_tokens=20, input_stream=lines)
    captured = capsys.readouterr()
    assert len(model.prompts) == 3 and len(model.prompts[1]) > len(model.prompts[0])
    assert "first question" in smollm2_tokenizer.decode(model.prompts[1])  # the history is in the prompt
    assert "dropped the oldest 2 message(s)" in captured.err  # 3 questions do not fit in 70 - 20 tokens
    assert "first question" not in smollm2_tokenizer.decode(model.prompts[2])
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user", "assistant"]
    assert history[1]["content"] == "second question" and captured.out.count("Fine, thanks.") == 3


def test_message_longer_than_the_context_is_an_error(smollm2_tokenizer, smollm2_template):
    model = ScriptedModel([0], smollm2_tokenizer.n_words, max_seq_len=64)
    with pytest.raises(ValueError, match="more than the 32 the context leaves.*shorten it"):
        run_chat(model, smollm2_tokenizer, message="word " * 100, max_new_tokens=32)
    ids, dropped = fit_to_context(smollm2_template, smollm2_tokenizer, CONVERSATION, 1000)
    assert dropped == 0 and smollm2_tokenizer.decode(ids).startswith("system\nBe brief.")


def test_a_message_too_long_is_refused_and_the_chat_goes_on(smollm2_tokenizer, capsys):
    model = ScriptedModel(smollm2_tokenizer.encode("Fine.<|im_end|>", False, False), smollm2_tokenizer.n_words,
                          max_seq_len=160)
    lines = io.StringIO("hello\n" + "word " * 200 + "\nhow are you\n/exit\n")
    history = run_chat(model, smollm2_tokenizer, max_new_tokens=32, input_stream=lines)
    captured = capsys.readouterr()
    assert "more than the 128 the context leaves" in captured.err and "the chat goes on" in captured.err
    assert [m["content"] for m in history if m["role"] == "user"] == ["hello", "how are you"]
    assert captured.out.count("Fine.") == 2
