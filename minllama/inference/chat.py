"""Talking to an instruction-tuned model through its own chat template.

An instruct model was fine-tuned on conversations written in one exact format, e.g. SmolLM2's
ChatML: `<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n`. Asked in that format it
answers; asked in another it mostly continues the text. The format ships with the model as a
Jinja template (GGUF metadata `tokenizer.chat_template`, `chat_template` in a Hugging Face
tokenizer_config.json), so we render that template rather than writing the format by hand.
A template is code from the model's author: it runs in Jinja2's sandbox, with the variables
and helpers transformers gives it (`messages`, `add_generation_prompt`, `bos_token`,
`eos_token`, `raise_exception`, a `tojson` that keeps non-ASCII text), so it renders here as it
renders there.

The reply is generated token by token (on the fast decoding path, fast_decode.py, where it
covers the model; else on Llama's key/value cache) and printed as it comes; it ends
at the template's end-of-turn marker (what the template writes right after an assistant's words,
`<|im_end|>` for ChatML) or at EOS.
"""

import json
import sys
import traceback
from datetime import datetime

import torch
from jinja2.exceptions import TemplateError, TemplateSyntaxError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llama import sample_next_token
from minllama.inference import fast_decode

# For a model that brings no template (stories42M, a SentencePiece model): one line per turn,
# so the answer ends at the end of its line.
PLAIN_TEMPLATE = ("{% for message in messages %}{{ message['role'] | capitalize }}: "
                  "{{ message['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}Assistant:{% endif %}")

SENTINEL = "\u2063sentinel\u2063"  # a text no template writes, to find where a message's content goes


class ChatTemplateError(ValueError):
    """A chat template that does not compile or render; the message shows the template's line."""


def _raise_exception(message):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters (<, >, &), which would change the prompt.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    """The sandbox templates are written for: block tags swallow their own newline and leading
    spaces (trim_blocks, lstrip_blocks), `{% break %}` and `{% continue %}` work."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return environment


class ChatTemplate:
    """A model's Jinja chat template, compiled once (None: the plain-text fallback)."""

    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = "", origin: str = "chat template"):
        self.is_fallback = source is None
        self.source = PLAIN_TEMPLATE if source is None else source
        self.bos_token, self.eos_token, self.origin = bos_token, eos_token, origin
        try:
            self._template = _environment().from_string(self.source)
        except TemplateSyntaxError as error:
            raise ChatTemplateError(self._describe(error, error.lineno)) from None
        self.end_of_turn = self._find_end_of_turn()

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The conversation as the model's text; add_generation_prompt opens the assistant's turn."""
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as error:
            frames = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == "<template>"]
            raise ChatTemplateError(self._describe(error, frames[-1] if frames else None)) from None

    def _describe(self, error: TemplateError, lineno: int | None) -> str:
        where = f"{self.origin}, line {lineno}" if lineno else self.origin
        lines = self.source.splitlines()
        line = lines[lineno - 1] if lineno and lineno <= len(lines) else ""
        if len(line) > 300:
            line = line[:300] + " ..."
        return f"{where}: {type(error).__name__}: {error.message or error}" + (f"\n    {line}" if line else "")

    def _find_end_of_turn(self) -> str:
        """What the template writes right after an assistant's words, up to the end of that line
        (`<|im_end|>` for ChatML); a template that writes a bare newline ends turns with it, and
        one that writes nothing with EOS."""
        rendered = self.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": SENTINEL}])
        after = rendered.split(SENTINEL, 1)[1] if SENTINEL in rendered else ""
        first_line = after.lstrip(" ").split("\n", 1)[0].strip()
        if first_line:
            return first_line
        return "\n" if after.startswith("\n") else self.eos_token

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "ChatTemplate":
        """The template that came with a tokenizer (`Tokenizer.chat_template`, from the GGUF file
        or the checkpoint's tokenizer record); the plain-text fallback when it has none."""
        path = tokenizer.model_path
        origin = f"{path}: tokenizer.chat_template" if path is not None else "the tokenizer's chat template"
        return cls(tokenizer.chat_template, _token_text(tokenizer, tokenizer.bos_id),
                   _token_text(tokenizer, tokenizer.eos_id), origin)


def _token_text(tokenizer, token_id: int) -> str:
    """How a template writes a special token (bos_token, eos_token): its piece, e.g. '<|im_end|>'."""
    if tokenizer.kind == "bpe":
        return tokenizer.bpe.id_to_token(token_id)
    if tokenizer.kind == "sentencepiece":
        return tokenizer.sp.id_to_piece(token_id)
    return ""  # a character vocabulary has no text for its special ids


def zero_shot_chat_prompt(template: ChatTemplate, question: str) -> tuple[str, str]:
    """(prefix, suffix) texts to put around a sentence so that a zero-shot question is asked as
    a user turn and the assistant's answer begins with the question's answer stem.

    `question` is classifier.zero_shot_question's "Is this movie bad or good? This movie is":
    the user says "SENTENCE Is this movie bad or good?", the assistant's turn opens with "This
    movie is", so the label words are scored, as in the plain prompt, as the continuation
    " good" of the suffix. The template adds its own markers (and BOS, if it writes one): encode
    both texts without BOS."""
    ask, separator, answer_stem = question.partition("? ")
    if not separator:
        raise ValueError(f"zero-shot question {question!r} has no '? ' between the question and its answer")
    rendered = template.render([{"role": "user", "content": f"{SENTINEL} {ask}?"}], add_generation_prompt=True)
    if rendered.count(SENTINEL) != 1:
        raise ChatTemplateError(f"{template.origin}: the template does not write the user's message "
                                "unchanged, so the sentence cannot be placed in it")
    prefix, suffix = rendered.split(SENTINEL)
    return prefix, suffix + answer_stem


def stop_condition(template: ChatTemplate, tokenizer) -> tuple[set[int], str | None]:
    """(token ids, text) that end a reply: EOS, and the end-of-turn marker as one token id when
    the tokenizer has it as one (<|im_end|>), else as a text to look for in the decoded reply."""
    marker = tokenizer.encode(template.end_of_turn, bos=False, eos=False) if template.end_of_turn else []
    if len(marker) == 1:
        return {tokenizer.eos_id, marker[0]}, None
    return {tokenizer.eos_id}, template.end_of_turn or None


def reply_tokens(model, prompt_ids: list[int], max_new_tokens: int, step=None, **sampling):
    """The reply's token ids, one by one: on the fast decoding path (fast_decode.py, with its
    DecodingStep `step`) where it covers the model, else on Llama's own cache, where the prompt
    runs once and every later step feeds only the newest token. Both give the same tokens in
    float32 (tests/test_fast_decode.py)."""
    tokens = torch.tensor([prompt_ids], device=model.device)  # (1, T), then (1, 1)
    if step is not None and fast_decode.covers(model, len(prompt_ids) + max_new_tokens):
        for next_token in fast_decode.decoded_tokens(model, tokens, max_new_tokens, step, **sampling):
            yield int(next_token)
        return
    cache = model.new_kv_cache(1, len(prompt_ids) + max_new_tokens)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = model(tokens, kv_cache=cache)  # (1, 1, V)
            next_id = int(sample_next_token(logits[:, -1, :], **sampling))
            yield next_id
            tokens = tokens.new_tensor([[next_id]])


def stream_reply(model, tokenizer, prompt_ids: list[int], max_new_tokens: int, stop_ids=frozenset(),
                 stop_text: str | None = None, step=None, **sampling):
    """Yield the reply to `prompt_ids` piece by piece as it is generated, up to a stop.

    The tokens come from reply_tokens (on `step`, a fast_decode.DecodingStep, where given).
    Pieces are whole characters: a character split over several byte tokens (UTF-8) decodes to
    U+FFFD until its last byte arrives, so the text is held back until then, and so is a tail
    that could still grow into `stop_text`. `sampling`: sample_next_token's temperature,
    epsilon, top_k, top_p."""
    generated, shown = [], 0
    for next_id in reply_tokens(model, prompt_ids, max_new_tokens, step, **sampling):
        if next_id in stop_ids:
            break
        generated.append(next_id)
        text = tokenizer.decode(generated)
        if stop_text is not None and stop_text in text:
            yield text[shown:text.index(stop_text)]
            return
        ready = len(text) - (len(stop_text) - 1 if stop_text else 0)
        if not text.endswith("\ufffd") and ready > shown:
            yield text[shown:ready]
            shown = ready
    text = tokenizer.decode(generated)
    if len(text) > shown:
        yield text[shown:]


class MessageTooLong(ValueError):
    """A chat message that does not fit the context even with no history before it."""


def fit_to_context(template: ChatTemplate, tokenizer, messages: list[dict], room: int) -> tuple[list[int], int]:
    """Encode the conversation for the assistant's next turn within `room` tokens, dropping the
    oldest exchanges (never the system message nor the newest user message) until it fits.
    Returns (prompt ids, number of messages dropped)."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    for dropped in range(len(turns)):
        if dropped and turns[dropped - 1]["role"] == "user":
            continue  # drop a user message together with the answer that follows it
        text = template.render(system + turns[dropped:], add_generation_prompt=True)
        ids = tokenizer.encode(text, bos=True, eos=False)
        if len(ids) <= room:
            return ids, dropped
    raise MessageTooLong(f"the message is {len(ids)} tokens with the chat template"
                     f"{' and the system message' if system else ''}, more than the {room} the "
                     "context leaves for it after the reply's max_new_tokens: shorten it")


def run_chat(model, tokenizer, message: str | None = None, system: str | None = None,
             max_new_tokens: int = 256, temperature: float = 0.2, epsilon: float = 0.0,
             top_k: int | None = None, top_p: float | None = 0.9, context_len: int | None = None,
             input_stream=None, out=None):
    """Chat with `model` through its tokenizer's chat template.

    With `message`, answer it once and return the answer. Without, read messages line by line
    from `input_stream` (stdin) until end of input or `/exit`, keeping the history, and return
    it. The reply is printed to `out` (stdout) as it is generated; notes go to stderr. Ctrl-C
    interrupts a reply (it is dropped from the history), and at the prompt ends the chat. A message
    too long for the context is refused on its own: the chat goes on without it.
    `context_len` (default: the model's max_seq_len) bounds prompt + reply; when the history
    would not fit, the oldest exchanges are dropped, and said so."""
    out = out or sys.stdout
    input_stream = input_stream or sys.stdin
    context_len = min(context_len or model.config.max_seq_len, model.config.max_seq_len)
    if max_new_tokens >= context_len:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room in a context of {context_len} tokens")
    template = ChatTemplate.for_tokenizer(tokenizer)
    if template.is_fallback:
        print("note: this model has no chat template; using a plain 'Role: text' format, "
              "which it was not trained on", file=sys.stderr)
    stop_ids, stop_text = stop_condition(template, tokenizer)
    sampling = dict(temperature=temperature, epsilon=epsilon, top_k=top_k, top_p=top_p)
    step = fast_decode.DecodingStep(model) if fast_decode.covers(model, context_len) else None  # built once
    history = [{"role": "system", "content": system}] if system else []

    def reply(user_text: str) -> str:
        nonlocal history
        asked = history + [{"role": "user", "content": user_text}]
        prompt_ids, dropped = fit_to_context(template, tokenizer, asked, context_len - max_new_tokens)
        history = asked  # only a message that fits joins the history
        if dropped:
            keep = 1 if system else 0
            history = history[:keep] + history[keep + dropped:]
            print(f"note: dropped the oldest {dropped} message(s) of the history to fit the "
                  f"{context_len}-token context", file=sys.stderr)
        pieces = []
        try:
            for piece in stream_reply(model, tokenizer, prompt_ids, max_new_tokens, stop_ids, stop_text, step,
                                      **sampling):
                pieces.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            history = history[:-1]
            out.write(" [interrupted]\n")
            raise
        out.write("\n")
        answer = "".join(pieces).strip()
        history = history + [{"role": "assistant", "content": answer}]
        return answer

    if message is not None:
        try:
            return reply(message)
        except KeyboardInterrupt:
            return None
    while True:
        if input_stream.isatty():
            out.write("> ")
            out.flush()
        try:
            line = input_stream.readline()
        except KeyboardInterrupt:
            out.write("\n")
            return history
        if not line or line.strip() == "/exit":
            return history
        if line.strip():
            try:
                reply(line.strip())
            except KeyboardInterrupt:
                continue
            except MessageTooLong as error:  # one message too long ends nothing but itself
                print(f"error: {error}; this message is left out, and the chat goes on", file=sys.stderr)
