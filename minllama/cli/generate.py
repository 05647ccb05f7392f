"""`--option generate`: continue the assignment's prompt by 75 tokens, greedily (temperature 0)
and sampled (temperature 1), into the two files the graders read."""

from pathlib import Path

from minllama.cli.common import GENERATION_PROMPT, RunError, load_model_and_tokenizer
from utils import write_atomically


def add_flags(parser) -> None:
    group = parser.add_argument_group("generation (--option generate)")
    group.add_argument("--generated_sentence_low_temp_out", default="generated-sentence-temp-0.txt")
    group.add_argument("--generated_sentence_high_temp_out", default="generated-sentence-temp-1.txt")
    group.add_argument("--epsilon", type=float, default=0.05, help="drop tokens below this probability")
    group.add_argument("--top_k", type=int, default=None, help="sample from the k most likely tokens")
    group.add_argument("--top_p", type=float, default=None, help="nucleus sampling threshold")


def check(args) -> None:
    if not 0 <= args.epsilon < 1:
        raise RunError(f"--epsilon must be in [0, 1), got {args.epsilon}")
    if args.top_k is not None and args.top_k < 1:
        raise RunError(f"--top_k must be positive, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise RunError(f"--top_p must be in (0, 1], got {args.top_p}")


def run(args, device, dist, out_dir: Path) -> dict:
    model, tokenizer = load_model_and_tokenizer(args, device)
    write_continuations(model.generate, tokenizer, args, device, out_dir)
    return {}


def write_continuations(generate, tokenizer, args, device, out_dir: Path, around=None) -> None:
    """generate(prompt, max_new_tokens, temperature, epsilon, top_k, top_p) at temperature 0 and 1,
    each printed and written to its file; `around(temperature)`, if given, is a context manager
    the call runs in (the A+ decoding filters)."""
    from contextlib import nullcontext

    import torch

    from minllama.training.loop import autocast

    prompt = torch.tensor([tokenizer.encode(GENERATION_PROMPT, bos=True, eos=False)], device=device)
    outputs = ((0.0, args.generated_sentence_low_temp_out), (1.0, args.generated_sentence_high_temp_out))
    for temperature, name in outputs:
        with autocast(device), (around(temperature) if around else nullcontext()):
            tokens = generate(prompt, max_new_tokens=75, temperature=temperature, epsilon=args.epsilon,
                              top_k=args.top_k, top_p=args.top_p)
        text = tokenizer.decode(tokens[0].tolist())
        print(f"temperature {temperature}:\n{text}\n---------------")
        path = out_dir / name
        write_atomically(path, text)
        print(f"wrote {path}")
