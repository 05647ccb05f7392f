"""One conversation's tokens, each marked by whether it carries the loss: what instruction tuning
learns from, made visible.

Instruction tuning renders a conversation through the model's chat template and trains only on the
assistant's answers and the end-of-turn marker after each (instruct_data.encode_conversation): the
model should learn to answer, not to write the user's questions or the template's markup. Printing
the mask token by token shows exactly where that line falls, e.g. whether the `<|im_end|>` that
teaches the model to stop is learned, and that the role markers are not:

      loss    id  token
         .     1  '<|im_start|>'
         .  4093  'user'
         ...
         +  2685  'Paris'
         +     2  '<|im_end|>'
"""

from minllama.inference.chat import ChatTemplate
from minllama.instruct.instruct_data import encode_conversation


def loss_mask_table(tokenizer, ids: list[int], mask: list[int]) -> str:
    """A line per token: `+` where it carries the loss, `.` where it does not, its id and its text."""
    if len(ids) != len(mask):
        raise ValueError(f"{len(ids)} token ids but {len(mask)} mask values")
    width = max([len(str(i)) for i in ids] + [2])
    lines = [f"  loss  {'id':>{width}}  token"]
    lines += [f"     {'+' if learn else '.'}  {i:>{width}}  {tokenizer.decode([i])!r}" for i, learn in zip(ids, mask)]
    return "\n".join(lines)


def show_loss_mask(template: ChatTemplate, tokenizer, messages: list[dict]) -> str:
    """The table of one conversation as instruction tuning encodes it, with the count of learned tokens."""
    ids, mask = encode_conversation(template, tokenizer, messages)
    return loss_mask_table(tokenizer, ids, mask) + f"\n{sum(mask)} of {len(ids)} tokens carry the loss"
