"""The solution's inference on top of the course's generation: lighter weights (--dtype, --quantize),
the fast decoding path and its compiled step (--compile), the decoding filters (--min_p,
--repetition_penalty) and `--option chat`. Not in a skeleton: Llama.generate is the students' own."""

from contextlib import nullcontext
from functools import partial
from pathlib import Path

from minllama.cli import generate as course_generation
from minllama.cli.common import RunError, load_model_and_tokenizer
from minllama.pretraining import architectures  # noqa: F401  (a pre-trained ablation generates too)


def add_flags(parser) -> None:
    group = parser.add_argument_group("inference (generate, prompt, chat)")
    group.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                       help="generate, prompt, chat: the weights' type (float32 matches the graders' references)")
    group.add_argument("--quantize", choices=("int8", "int4"), default=None,
                       help="generate, prompt, chat: int8 weights, or int4 in groups of 32, in the linear layers "
                            "(quantize.py; CPU kernels)")
    group.add_argument("--compile", action="store_true",
                       help="generate: torch.compile the one-token decoding step (fast_decode.py; the same tokens; "
                            "needs a C++ compiler, and compiling takes tens of seconds)")
    group.add_argument("--min_p", type=float, default=None, help="generate: min-p sampling (Nguyen et al. 2024)")
    group.add_argument("--repetition_penalty", type=float, default=None,
                       help="generate: divide the logits of tokens already seen by this (> 1; CTRL)")
    talk = parser.add_argument_group("chat (--option chat)")
    talk.add_argument("--message", default=None, help="answer this one message and exit (default: a conversation)")
    talk.add_argument("--system", default=None, help="a system message in front of the conversation")
    talk.add_argument("--max_new_tokens", type=int, default=256, help="the longest reply")
    talk.add_argument("--temperature", type=float, default=0.2, help="sampling temperature (0: greedy)")


def check(args) -> None:
    if args.min_p is not None and not 0 < args.min_p <= 1:
        raise RunError(f"--min_p must be in (0, 1], got {args.min_p}")
    if args.repetition_penalty is not None and not args.repetition_penalty > 0:
        raise RunError(f"--repetition_penalty must be greater than 0, got {args.repetition_penalty}")
    if args.temperature < 0:
        raise RunError(f"--temperature must not be negative, got {args.temperature}")
    if args.max_new_tokens < 1:
        raise RunError(f"--max_new_tokens must be positive, got {args.max_new_tokens}")
    if args.quantize is not None and args.dtype != "float32":
        raise RunError(f"--quantize {args.quantize} quantises float32 weights: leave out --dtype")
    if (args.quantize or args.dtype != "float32") and args.option not in ("generate", "prompt", "chat"):
        raise RunError("--quantize and --dtype are for inference (generate, prompt, chat); training stays float32")
    if args.compile and (args.option != "generate" or args.min_p is not None or args.repetition_penalty is not None):
        raise RunError("--compile compiles the decoding step of --option generate (without --min_p and "
                       "--repetition_penalty, which hook into Llama.generate)")


def check_device(quantize: str | None, device) -> None:
    if quantize == "int4" and device.type != "cpu":
        raise RunError(f"--quantize int4 runs on torch's int4 CPU kernel, not on {device.type}: "
                       "use --quantize int8 or --dtype bfloat16 there, or --device cpu")


def load_for_inference(args, device):
    """The checkpoint the flags name, with its tokenizer, as --dtype / --quantize ask."""
    from minllama.inference.quantize import prepare_for_inference

    check_device(args.quantize, device)
    model, tokenizer = load_model_and_tokenizer(args, device)
    return prepare_for_inference(model, args.dtype, args.quantize).to(device), tokenizer


def run(args, device, dist, out_dir: Path) -> dict:
    """generate and chat (prompt, whose weights --dtype and --quantize set too, is run by methods.py)."""
    if args.option == "chat":
        return run_chat(args, device)
    model, tokenizer = load_for_inference(args, device)
    course_generation.write_continuations(generator(model, args), tokenizer, args, device, out_dir,
                                          around=lambda temperature: decoding_filters(model, temperature, args))
    return {}


def generator(model, args):
    """The same tokens as model.generate through fast_decode.py, unless a decoding filter needs
    generate's hooks on the model."""
    from minllama.inference import fast_decode

    if args.min_p is not None or args.repetition_penalty is not None:
        return model.generate
    generate = partial(fast_decode.generate, model, step=fast_decode.DecodingStep(model, compile=args.compile))
    return compile_errors_explained(generate) if args.compile else generate


def compile_errors_explained(generate):
    """generate, with torch.compile's failure to build its kernels (it happens at the first call)
    turned into one line that says what to do."""
    from torch._dynamo.exc import BackendCompilerFailed

    def checked(*args, **kwargs):
        try:
            return generate(*args, **kwargs)
        except BackendCompilerFailed as error:
            failure = type(error.inner_exception).__name__
            raise RunError(f"--compile: torch.compile could not build its kernels here ({failure}; is a C++ "
                           "compiler installed?): run without --compile") from None
    return checked


def decoding_filters(model, temperature: float, args):
    """min-p and the repetition penalty around generate, when asked for (decoding.py)."""
    if args.min_p is None and args.repetition_penalty is None:
        return nullcontext()
    from minllama.inference.decoding import logits_filters

    return logits_filters(model, temperature, args.min_p, args.repetition_penalty)


def run_chat(args, device) -> dict:
    """--option chat: one answer to --message, or a conversation on stdin (chat.py)."""
    from minllama.inference.chat import ChatTemplateError
    from minllama.inference.chat import run_chat as chat

    model, tokenizer = load_for_inference(args, device)
    try:
        chat(model, tokenizer, message=args.message, system=args.system, max_new_tokens=args.max_new_tokens,
             temperature=args.temperature, epsilon=0.0, top_k=args.top_k,
             top_p=0.9 if args.top_p is None else args.top_p)
    except (ChatTemplateError, ValueError) as error:
        raise RunError(str(error)) from None
    return {}
