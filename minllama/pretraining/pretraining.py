"""`--option pretrain`: teach a Llama to predict the next token of plain text.

From scratch (a new model whose shape comes from flags or a --preset, with a character
vocabulary, a SentencePiece model trained on the corpus, or an existing tokenizer), or continued
from a pretrained checkpoint on in-domain text: domain-adaptive pre-training (Gururangan et al.
2020, Sec. 3), after which the result fine-tunes like any other checkpoint.

Everything goes to one folder: best.pt (the lowest validation loss; the stories42M `.pt` layout
plus the tokenizer record, so load_pretrained and every option read it), last.pt (also the
optimizer, the loop's state and the random generator: `--resume` continues from it), the
tokenizer, metrics.jsonl, loss.png and summary.json.
"""

import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from config import LlamaConfig
from llama import Llama, load_pretrained
from minllama.pretraining import architectures  # noqa: F401  (hands the ablated layers to llama.py)
from minllama.pretraining.step_cost import check_step_cost
from minllama.training.data import (InputError, check_long_enough, corpus_documents, encode_documents, fixed_windows,
                                    split_train_val, tokenizer_fingerprint, windows_at)
from minllama.training.loop import Distributed, LoopSettings, LoopState, RunHooks, autocast, train
from minllama.training.objectives import LanguageModelLoss
from minllama.training.run_log import MetricsLog, plot_losses, write_summary
from minllama.training.run_record import check_folder_free, check_resume, text_sha256
from support.checkpoints import load_torch_file
from tokenizer import Tokenizer, tokenizer_for_checkpoint, train_sentencepiece
from utils import NoSpaceError, save_atomically

SAMPLE_TOKENS = 64


@dataclass(frozen=True)
class PretrainData:
    """Where the text comes from and how it is cut."""
    corpus: Path | None  # a plain-text file ...
    sentences: Path | None  # ... or the sentences of a LABEL ||| SENTENCE file
    val_corpus: Path | None  # default: the last 10% of the training text
    window: int  # tokens per training example (--max_seq_len)
    batch_size: int  # windows per optimizer step, over all processes
    eval_batches: int
    cache_dir: Path
    seed: int


@dataclass(frozen=True)
class PretrainRecord:
    """The settings that make a pre-training run what it is (run_record.py): recorded in last.pt,
    checked on --resume and before a new run replaces a folder's run. The model's shape and its
    tokenizer are checked apart (check_resumable)."""
    corpus_sha256: str
    val_corpus_sha256: str | None
    max_seq_len: int
    batch_size: int
    seed: int
    max_steps: int
    lr: float
    lr_schedule: str
    warmup_steps: int
    min_lr: float
    weight_decay: float
    beta2: float
    max_grad_norm: float | None

    @classmethod
    def of(cls, documents: list[str], val_documents: list[str] | None, data: "PretrainData",
           settings: LoopSettings) -> "PretrainRecord":
        return cls(text_sha256(documents), text_sha256(val_documents) if val_documents is not None else None,
                   data.window, data.batch_size, data.seed, settings.max_steps, settings.lr, settings.lr_schedule,
                   settings.warmup_steps, settings.min_lr, settings.weight_decay, settings.betas[1],
                   settings.max_grad_norm)


@dataclass(frozen=True)
class RunFolder:
    """What to do with the run already in the output folder: continue it (`resume`, allowing the
    changes `allow_changed` names), replace it (`overwrite`), or neither (refuse one of other settings)."""
    resume: bool = False
    overwrite: bool = False
    allow_changed: frozenset = frozenset()


@dataclass(frozen=True)
class ModelChoice:
    """The model to train: continued from `base` (a checkpoint), or new with `config_fields`
    (vocab_size comes from the tokenizer); `tokenizer` is a path, "char", or None (the base's own,
    else tokenizer.model); `train_tokenizer` a vocabulary size to train on the corpus."""
    base: Path | None
    config_fields: dict
    tokenizer: str | None
    train_tokenizer: int | None


def choose_tokenizer(choice: ModelChoice, documents: list[str], data: PretrainData, out_dir: Path,
                     dist: Distributed) -> Tokenizer:
    """The tokenizer of the run, saved into out_dir (rank 0 trains or writes; the others read)."""
    if choice.train_tokenizer is not None:
        if dist.is_main:
            with sentences_file(documents, data.corpus, out_dir) as corpus:
                try:
                    train_sentencepiece(corpus, choice.train_tokenizer, out_dir)
                except ValueError as error:
                    raise InputError(str(error)) from None
        dist.barrier()
        return Tokenizer(tokenizer_model=out_dir / "tokenizer.model")
    if choice.tokenizer == "char":
        tokenizer = Tokenizer.from_corpus_chars("".join(documents))
    elif choice.tokenizer is not None:
        try:
            tokenizer = Tokenizer(tokenizer_model=choice.tokenizer)
        except ValueError as error:  # not a tokenizer file of a kind we read
            raise InputError(str(error)) from None
    elif choice.base is not None:
        tokenizer = tokenizer_for_checkpoint(choice.base)
    else:
        tokenizer = Tokenizer()
    if dist.is_main:
        tokenizer.save(out_dir)
    return tokenizer


@contextmanager
def sentences_file(documents: list[str], corpus: Path | None, out_dir: Path):
    """A text file for SentencePiece's trainer, which reads files: the corpus itself, or the
    training sentences one a line in a temporary file that is removed afterwards."""
    if corpus is not None:
        yield corpus
        return
    path = out_dir / f".tokenizer-sentences-{os.getpid()}.txt"
    try:
        path.write_text("\n".join(documents) + "\n", encoding="utf-8")
        yield path
    finally:
        path.unlink(missing_ok=True)


def build_model(choice: ModelChoice, tokenizer: Tokenizer, window: int) -> Llama:
    """A new Llama sized for the tokenizer, or the base checkpoint (its own config; `dropout` may
    be set anew). The model's context must hold a window."""
    if choice.base is not None:
        overrides = {k: v for k, v in choice.config_fields.items() if k in ("dropout", "norm_type")}
        model = load_pretrained(choice.base, **overrides)
        if tokenizer.n_words > model.config.vocab_size:
            raise InputError(f"the tokenizer has {tokenizer.n_words} tokens but {choice.base} only "
                             f"{model.config.vocab_size}: continued pre-training keeps the model's own vocabulary")
    else:
        model = Llama(LlamaConfig(**{**choice.config_fields, "vocab_size": tokenizer.n_words}))
    if window > model.config.max_seq_len:
        raise InputError(f"--max_seq_len {window} is longer than the model's context {model.config.max_seq_len}")
    return model


def read_resume(out_dir: Path) -> dict:
    """last.pt of an earlier run in out_dir (written at every evaluation and on Ctrl-C)."""
    path = out_dir / "last.pt"
    if not path.is_file():
        raise InputError(f"--resume: {path} not found (a run writes it at every evaluation and on Ctrl-C)")
    return load_torch_file(path)


def check_folder(out_dir: Path, record: PretrainRecord) -> None:
    """A new run may not replace another run's files in out_dir without --overwrite."""
    last = out_dir / "last.pt"
    if last.is_file():
        recorded = load_torch_file(last, mmap=True).get("run_record", {}).get("settings")
        check_folder_free(recorded, record, last, "pre-training")
    elif (out_dir / "best.pt").is_file():
        check_folder_free(None, record, out_dir / "best.pt", "pre-training")


def check_resumable(checkpoint: dict, path: Path, model: Llama, requested: Tokenizer) -> None:
    """The run being resumed must have the same tokenizer and the same architecture."""
    saved_tokenizer = Tokenizer.from_record(checkpoint["tokenizer"])
    if tokenizer_fingerprint(saved_tokenizer) != tokenizer_fingerprint(requested):
        raise InputError(f"--resume: {path} was trained with another tokenizer ({saved_tokenizer.kind}, "
                         f"{saved_tokenizer.n_words} tokens) than this command's ({requested.kind}, {requested.n_words})")
    saved, wanted = checkpoint["model_args"], model.config.to_dict()
    different = sorted(k for k in wanted if saved.get(k) != wanted[k] and k != "dropout")
    if different:
        raise InputError(f"--resume: {path} is a model with " + ", ".join(f"{k}={saved.get(k)}" for k in different)
                         + "; this command asks for " + ", ".join(f"{k}={wanted[k]}" for k in different))


class PretrainHooks(RunHooks):
    """Evaluation (loss, perplexity, bits per character, a sample), checkpoints and logs."""

    metric = "val_loss"

    def __init__(self, model, tokenizer, val_batches, chars_per_token, out_dir: Path, log: MetricsLog | None,
                 device, dist: Distributed, sample_prompt: list[int], summary: dict, run_record: dict):
        self.model, self.tokenizer, self.val_batches = model, tokenizer, val_batches
        self.chars_per_token, self.out_dir, self.log, self.device, self.dist = chars_per_token, out_dir, log, device, dist
        self.sample_prompt, self.summary, self.run_record = sample_prompt, summary, run_record

    @torch.no_grad()
    def evaluate(self, model, step):
        model.eval()
        losses = []
        for batch in self.val_batches:
            with autocast(self.device):
                losses.append(LanguageModelLoss()(model, batch).item())
        loss = sum(losses) / len(losses)
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # a sample must not change the training's random stream
            torch.manual_seed(step)
            prompt = torch.tensor([self.sample_prompt], device=self.device)
            tokens = model.generate(prompt, SAMPLE_TOKENS, temperature=0.8, epsilon=0.0)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50)),
                "val_bits_per_char": loss / math.log(2) / self.chars_per_token,
                "sample": self.tokenizer.decode(tokens[0, len(self.sample_prompt):].tolist())}

    def on_evaluation(self, state, metrics, improved, optimizer):
        if not self.dist.is_main:
            return
        record = {"step": state.step, **{k: v for k, v in metrics.items()}}
        self.log.write(record)
        if improved:
            self.save(self.out_dir / "best.pt", state)
        self.save(self.out_dir / "last.pt", state, optimizer)
        plot_losses(self.log.records(), self.out_dir / "loss.png", f"pre-training {self.out_dir.name}")
        print(f"step {state.step}: val loss {metrics['val_loss']:.4f}, perplexity {metrics['val_perplexity']:.2f}, "
              f"{metrics['val_bits_per_char']:.3f} bits/char{' (best)' if improved else ''}\n"
              f"  sample: {metrics['sample']!r}")

    def on_interrupt(self, state, optimizer):
        if self.dist.is_main:
            self.save(self.out_dir / "last.pt", state, optimizer)
        return (f"interrupted after step {state.step}: saved {self.out_dir / 'last.pt'}; "
                "to continue, run the same command with --resume")

    def log_step(self, state, loss, lr, tokens_per_second):
        self.log.write({"step": state.step, "loss": loss, "lr": lr, "tokens_per_second": tokens_per_second})

    def save(self, path: Path, state: LoopState, optimizer=None) -> None:
        checkpoint = {"model_args": self.model.config.to_dict(), "model": self.model.state_dict(),
                      "tokenizer": self.tokenizer.to_record(), "step": state.step, "best_val_loss": state.best,
                      "run": self.summary, "run_record": self.run_record}
        if optimizer is not None:
            checkpoint.update(optimizer=optimizer.state_dict(), loop_state=state.to_dict(),
                              rng_state=torch.get_rng_state())
            if self.device.type == "cuda":
                checkpoint["cuda_rng_state"] = torch.cuda.get_rng_state(self.device)
        try:
            save_atomically(checkpoint, path)
        except NoSpaceError as error:  # the file written before is still whole: say which
            best = self.out_dir / "best.pt"
            raise NoSpaceError(f"{error}; {best} kept" if best.is_file() else str(error)) from None


def run_pretraining(data: PretrainData, choice: ModelChoice, settings: LoopSettings, out_dir: Path, folder: RunFolder,
                    device: torch.device, dist: Distributed) -> dict:
    """Read and encode the text, build the model, train, and return the run's summary."""
    start = time.time()
    check_batch_split(data.batch_size, settings.grad_accum, dist)
    checkpoint = read_resume(out_dir) if folder.resume else None
    documents, name = corpus_documents(data.corpus, data.sentences)
    val_documents, val_name = corpus_documents(data.val_corpus) if data.val_corpus is not None else (None, None)
    record = PretrainRecord.of(documents, val_documents, data, settings)
    run_record = {"settings": asdict(record), "changes": []}
    if checkpoint is not None:
        step, recorded = checkpoint["step"], checkpoint.get("run_record", {})
        changed = check_resume(recorded.get("settings"), record, folder.allow_changed, out_dir / "last.pt")
        run_record["changes"] = recorded.get("changes", []) + [{"step": step, **change} for change in changed]
        if step >= settings.max_steps:
            print(f"the run in {out_dir} is finished: step {step} of {settings.max_steps}, nothing to resume "
                  "(to train it longer, raise --max_steps and add --allow_changed max_steps)")
            return {"finished": True, "steps": step}
        if dist.is_main:
            print(f"resuming from step {step} of {settings.max_steps}")
    elif not folder.overwrite:
        check_folder(out_dir, record)
    if checkpoint is not None and choice.train_tokenizer is not None:
        tokenizer = Tokenizer.from_record(checkpoint["tokenizer"])  # trained by the first run
    else:
        tokenizer = choose_tokenizer(choice, documents, data, out_dir, dist)
    # Every process encodes (or finds in the cache) the same ids; concurrent writers are harmless
    # because each writes its own temporary file and renames it.
    ids, n_unknown = encode_documents(documents, tokenizer, data.cache_dir, name)
    if data.val_corpus is not None:
        train_ids = ids
        val_ids, _ = encode_documents(val_documents, tokenizer, data.cache_dir, val_name)
    else:
        train_ids, val_ids = split_train_val(ids)
    if n_unknown and dist.is_main:
        print(f"warning: {n_unknown} characters of {name} are not in the character vocabulary (mapped to <unk>)")
    model = build_model(choice, tokenizer, data.window).to(device)
    check_step_cost(model, data.window, data.batch_size // (settings.grad_accum * dist.world_size), data.batch_size,
                    device)
    if checkpoint is not None:
        check_resumable(checkpoint, out_dir / "last.pt", model, tokenizer)
        model.load_state_dict(checkpoint["model"])
        torch.set_rng_state(checkpoint["rng_state"])
        if "cuda_rng_state" in checkpoint and device.type == "cuda":
            torch.cuda.set_rng_state(checkpoint["cuda_rng_state"], device)

    check_long_enough(train_ids, data.window, "the training text")

    def batch_at(step: int) -> dict:
        # The windows of a step depend on the seed and the step only: a resumed run sees the same.
        generator = torch.Generator().manual_seed(data.seed * 1_000_003 + step)
        starts = torch.randint(len(train_ids) - data.window, (data.batch_size,), generator=generator)
        return windows_at(train_ids, starts.tolist(), data.window, device)

    val_batches = fixed_windows(val_ids, data.window, data.batch_size, data.eval_batches, device)
    n_params = sum(p.numel() for p in model.parameters())
    summary = {"corpus": name, "tokenizer": tokenizer.kind, "vocab_size": tokenizer.n_words,
               "train_tokens": len(train_ids), "val_tokens": len(val_ids), "parameters": n_params,
               "model_args": model.config.to_dict(), "settings": asdict(settings), "run_record": run_record}
    if dist.is_main:
        print(f"pre-training {n_params:,} parameters on {len(train_ids):,} tokens of {name} "
              f"({tokenizer.kind} tokenizer, {tokenizer.n_words} tokens; validation: {len(val_ids):,} tokens)")
    chars_per_token = len(tokenizer.decode(val_ids.tolist())) / len(val_ids)
    log = MetricsLog(out_dir, checkpoint["step"] if checkpoint else None) if dist.is_main else None
    hooks = PretrainHooks(model, tokenizer, val_batches, chars_per_token, out_dir, log, device, dist,
                          sample_prompt=val_ids[:8].astype(int).tolist(), summary=summary,
                          run_record=run_record)
    state = LoopState(**checkpoint["loop_state"]) if checkpoint else LoopState()
    tokens_before, training_started = state.tokens_seen, time.time()
    state = train(model, LanguageModelLoss(), batch_at, settings, hooks, device, dist, state,
                  checkpoint["optimizer"] if checkpoint else None)
    training_seconds = time.time() - training_started  # evaluations included
    summary.update(best_val_loss=state.best, best_step=state.best_step, steps=state.step,
                   tokens_seen=state.tokens_seen, wall_seconds=time.time() - start,
                   tokens_per_second=(state.tokens_seen - tokens_before) / training_seconds,
                   peak_memory_mb=peak_memory_mb(device))
    if dist.is_main:
        write_summary(out_dir / "summary.json", summary)
    return summary


def check_batch_split(batch_size: int, grad_accum: int, dist: Distributed) -> None:
    if batch_size % (grad_accum * dist.world_size):
        raise InputError(f"--batch_size {batch_size} does not split into --grad_accum {grad_accum} x "
                         f"{dist.world_size} processes: choose a multiple of {grad_accum * dist.world_size}")


def peak_memory_mb(device: torch.device) -> float | None:
    """The most memory the run held: the GPU's allocator peak, else this process's peak resident
    set (None where the system does not say: Windows has no `resource` module)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS counts bytes, Linux KiB
