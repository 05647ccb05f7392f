"""The loss-mask printer of the notebook (minllama/instruct/mask_view.py): one line per token, marked
exactly where instruction tuning's mask is 1, on a hand-built conversation."""

import pytest

from minllama.inference.chat import ChatTemplate
from minllama.instruct.mask_view import loss_mask_table, show_loss_mask
from tokenizer import Tokenizer

CHATML = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<end>\n{% endfor %}"
          "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_each_token_is_marked_as_the_mask_says():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "ok?"}, {"role": "assistant", "content": "ok"}]
    template = ChatTemplate(CHATML)
    tokenizer = Tokenizer.from_corpus_chars(template.render(messages))
    lines = show_loss_mask(template, tokenizer, messages).splitlines()
    rows = lines[1:-1]
    learned = "".join(eval(row.split(maxsplit=2)[2]) for row in rows if row.split()[0] == "+")  # noqa: S307
    assert learned == "yo<end>ok<end>"  # both answers and the marker ending each, nothing of the user's
    # BOS, then one token a character
    assert rows[0].split()[0] == "." and len(rows) == 1 + len(template.render(messages))
    assert lines[-1] == f"{len(learned)} of {len(rows)} tokens carry the loss"


def test_ids_and_mask_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="3 token ids but 2 mask values"):
        loss_mask_table(Tokenizer.from_corpus_chars("abc"), [0, 1, 2], [0, 1])
