"""The two documents a skeleton gets: its structure.md (the solution's, without what the course does
not ship) and its README (written for the course). Used by make_skeleton.py."""

import re

from support.course import Course

_BACKTICKED = re.compile(r"`([^`]+)`")
_LIST_ITEM = re.compile(r"\s*(?:[-*]|\d+\.)\s")
_OPTION = re.compile(r"--option (\w+)")


def _blocks(lines: list[str]) -> list[list[str]]:
    """Lines grouped into blocks: a table row, or a list item with its indented continuation lines;
    every other line alone."""
    blocks = []
    for line in lines:
        continues = (blocks and _LIST_ITEM.match(blocks[-1][0]) and line.startswith(" ") and line.strip())
        if continues:
            blocks[-1].append(line)
        else:
            blocks.append([line])
    return blocks


def _is_path(name: str, paths: set[str]) -> bool:
    return name in paths or (name.endswith("/") and any(p.startswith(name) for p in paths))


def _ships(name: str, shipped: set[str], left_out: set[str]) -> bool:
    """A file ships when the skeleton has it; a folder (`tests/`) when it ships whole."""
    if name.endswith("/"):
        return any(p.startswith(name) for p in shipped) and not any(p.startswith(name) for p in left_out)
    return name in shipped


def skeleton_structure(source: str, course: Course, shipped: list[str], left_out: list[str],
                       blanked: list, absent_regions: list) -> str:
    """structure.md for `course`'s skeleton. In the table of files, a row naming a file or folder
    the skeleton does not have is dropped, and the "you implement" cell of a one-file row lists
    the pieces left to the students there. Any other row or list item that mentions what the
    course lacks (the files, an `--option` it does not offer, the classes and functions of the
    regions it does not have) is dropped too."""
    shipped, left_out = set(shipped), set(left_out)
    words = ({name for name in left_out if "/" not in name}
             | {region.function.split(".")[0] for region in absent_regions})
    todo = {}
    for region in blanked:
        todo.setdefault(region.path, []).append(f"`{region.function}`")

    kept = []
    for block in _blocks(source.splitlines(keepends=True)):
        text = "".join(block)
        cells = text.strip().strip("|").split("|") if text.startswith("|") else []
        names = _BACKTICKED.findall(cells[0]) if cells else []
        if names and all(_is_path(name, shipped | left_out) for name in names):  # a row of the table of files
            if not all(_ships(name, shipped, left_out) for name in names):
                continue
            if len(cells) == 3 and len(names) == 1 and names[0].endswith(".py"):
                cells[2] = " " + (", ".join(todo.get(names[0], [])) or "–") + " "
                text = "|" + "|".join(cells) + "|\n"
        if any(word in text for word in words) or set(_OPTION.findall(text)) - set(course.options):
            continue
        kept.append(text)
    return "".join(kept)


def student_readme(course: Course, regions: list) -> str:
    todo = "\n".join(f"- `{r.path}`: `{r.function}`" for r in regions)
    has_lora = "lora" in course.options
    lora = "" if not has_lora else (
        "python run_llama.py --option lora --epochs 5 --lr 2e-5 --batch_size 80 --train data/sst-train.txt "
        "--dev data/sst-dev.txt --test data/sst-test.txt --label-names data/sst-label-mapping.json "
        "--dev_out sst-dev-lora-output.txt --test_out sst-test-lora-output.txt --lora_rank 4 --lora_alpha 1.0\n")
    return f"""# minllama: build Llama 2 from scratch

This is the version of the assignment for {course.description}. You implement the core of Llama 2
(Touvron et al. 2023) in PyTorch, load the pretrained 42M-parameter TinyStories model
`stories42M.pt`, generate text with it, and classify sentiment (SST-5, CFIMDB) by zero-shot
prompting and by fine-tuning{' (fully and with LoRA)' if has_lora else ''}.
`structure.md` explains every file, the order to work in, and the interface you must keep.

## Set-up

    bash setup.sh            # a .venv with the requirements, the data, tokenizer.model, stories42M.pt
    . .venv/bin/activate

## What you implement

Each piece below reads `# todo` followed by `raise NotImplementedError`, under a docstring that
explains the idea. Replace those two lines with your code; keep the names and signatures.

{todo}

## How to check your work

    python -m pytest -q tests/student   # quick checks of every piece, on small random models, then your progress
    python rope_test.py                 # prints "Rotary embedding test passed!"
    python optimizer_test.py            # prints "Optimizer test passed!"
    python sanity_check.py              # prints "Your Llama implementation is correct!" (needs stories42M.pt)

A test that fails with `NotImplementedError` points at a piece that is still a todo. The student
checks end with a summary: every piece with its state (todo, failing with the first failing check's
message, passing), the grader checks' state, and the command to run next
(`python -m minllama.tools.progress` prints the same).

## Running the assignment

    python run_llama.py --option generate
    python run_llama.py --option prompt --batch_size 10 --train data/sst-train.txt --dev data/sst-dev.txt --test data/sst-test.txt --label-names data/sst-label-mapping.json --dev_out sst-dev-prompting-output.txt --test_out sst-test-prompting-output.txt
    python run_llama.py --option finetune --epochs 5 --lr 2e-5 --batch_size 80 --train data/sst-train.txt --dev data/sst-dev.txt --test data/sst-test.txt --label-names data/sst-label-mapping.json --dev_out sst-dev-finetuning-output.txt --test_out sst-test-finetuning-output.txt
    {lora}
Run the same with the `cfimdb` files (`--batch_size 10` for fine-tuning). `data/cfimdb-test.txt`
has placeholder labels, so its accuracy means nothing.

## Submitting

    python prepare_submit.py . ANDREWID       # writes ANDREWID.zip and checks it
    python prepare_submit.py ANDREWID.zip ANDREWID

The zip holds one folder named after your Andrew ID with your code and output files, at most 10 MB
(no checkpoints: link to them in your report if you need to).
"""
