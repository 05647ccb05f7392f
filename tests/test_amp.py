"""Mixed precision of training (--amp): what auto picks on each GPU generation, float16's gradient
scaler on the CPU (a step that overflows is skipped, the scale adapts, a resumed run goes on with
the scale it had), and the choice printed and recorded in a run's summary."""

import json
import subprocess
import sys

import pytest
import torch

import run_llama
from minllama.training import loop as training
from minllama.training.loop import LoopSettings, LoopState, RunHooks, resolve_amp
from utils import REPO_ROOT as REPO

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


@pytest.mark.parametrize("capability, expected", [((7, 5), "float16"), ((7, 0), "float16"),
                                                  ((8, 0), "bfloat16"), ((9, 0), "bfloat16")])
def test_auto_decides_from_the_compute_capability(monkeypatch, capability, expected):
    """A T4 (7.5) or V100 (7.0) gets float16 even though is_bf16_supported() says True there."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp("auto", torch.device("cuda")) == expected


def test_auto_is_off_on_the_cpu_and_mps_and_an_explicit_choice_stands():
    assert resolve_amp("auto", torch.device("cpu")) == "off"
    assert resolve_amp("auto", torch.device("mps")) == "off"
    assert resolve_amp("float16", torch.device("cpu")) == "float16"
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_amp("fp8", torch.device("cpu"))


class OutputSum:
    """The loss sum(w . x): d loss / d output is 1, so under float16 autocast the scaled gradient
    reaching the float16 output is the scale itself, which overflows float16 (max 65504) at the
    scaler's initial 65536 and fits once halved."""

    def count(self, batch) -> int:
        return len(batch["input_ids"])

    def __call__(self, model, batch):
        return model(batch["input_ids"]).float().sum()


def train_linear(steps: int, state: LoopState | None = None, weight: torch.Tensor | None = None):
    model = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.full((1, 4), 0.5) if weight is None else weight)
    batch = {"input_ids": torch.ones(1, 4)}
    state = training.train(model, OutputSum(), lambda step: batch, LoopSettings(max_steps=steps, lr=0.1, amp="float16"),
                           RunHooks(), torch.device("cpu"), state=state)
    return model.weight.detach().clone(), state


def test_an_overflowing_float16_step_is_skipped_and_the_scale_halves():
    weight, state = train_linear(1)
    torch.testing.assert_close(weight, torch.full((1, 4), 0.5), rtol=0, atol=0)  # the step was skipped
    assert state.grad_scaler["scale"] == 2.0 ** 15 and state.step == 1
    weight, state = train_linear(2)
    assert (weight < 0.5).all()  # the second step, at the halved scale, did move the weights
    assert state.grad_scaler["scale"] == 2.0 ** 15 and state.grad_scaler["_growth_tracker"] == 1


def test_a_resumed_run_goes_on_with_the_scale_it_had():
    """Restored from LoopState (pretraining's last.pt keeps it): the first resumed step is not
    skipped again. A fresh scaler would start at 65536, overflow and leave the weights as they were."""
    weight, state = train_linear(1)
    saved = LoopState(**json.loads(json.dumps(state.to_dict())))  # as builtins, the way a checkpoint keeps it
    resumed, state = train_linear(2, saved, weight)
    assert (resumed < weight).all()
    assert state.grad_scaler["_growth_tracker"] == 1
    fresh, _ = train_linear(1, LoopState(step=0), weight)
    torch.testing.assert_close(fresh, weight, rtol=0, atol=0)


def pretrain(out_dir, corpus, *extra) -> int:
    return run_llama.main(["--option", "pretrain", "--corpus", str(corpus), "--tokenizer", "char", "--dim", "16",
                           "--n_layers", "1", "--n_heads", "2", "--max_seq_len", "16", "--batch_size", "2",
                           "--eval_batches", "1", "--out_dir", str(out_dir), *extra])


def test_resume_restores_the_scaler_from_last_pt_and_the_summary_records_the_choice(tmp_path, monkeypatch, capsys):
    """Pre-training on the CPU in float16: last.pt keeps the scaler, --resume goes on from it (one
    more step either keeps its scale and counts one more clean step, or halves it after an overflow;
    a fresh scaler would start again at 65536 with its counter at 0). `auto` is recorded as what it
    meant here: off."""
    monkeypatch.setenv("MINLLAMA_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 200)
    assert pretrain(tmp_path / "run", corpus, "--amp", "float16", "--max_steps", "1") == 0
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["loop_state"]["grad_scaler"]
    assert pretrain(tmp_path / "run", corpus, "--amp", "float16", "--max_steps", "2", "--resume",
                    "--allow_changed", "max_steps") == 0
    resumed = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["loop_state"]["grad_scaler"]
    assert (resumed["scale"], resumed["_growth_tracker"]) in ((saved["scale"], saved["_growth_tracker"] + 1),
                                                              (saved["scale"] / 2, 0))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["settings"]["amp"] == "float16"
    assert "mixed precision: float16 with a gradient scaler on cpu" in capsys.readouterr().out

    assert pretrain(tmp_path / "auto", corpus, "--max_steps", "1") == 0
    assert "mixed precision: off on cpu" in capsys.readouterr().out
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["settings"]["amp"] == "off"


def test_run_llama_asks_for_the_mps_cpu_fallback_before_torch_loads():
    """PYTORCH_ENABLE_MPS_FALLBACK is read when torch is imported: it must be set before that."""
    probe = ("import builtins, os\n"
             "real = builtins.__import__\n"
             "seen = []\n"
             "def spy(name, *args, **kwargs):\n"
             "    if name == 'torch' and not seen:\n"
             "        seen.append(os.environ.get('PYTORCH_ENABLE_MPS_FALLBACK'))\n"
             "    return real(name, *args, **kwargs)\n"
             "builtins.__import__ = spy\n"
             "import run_llama\n"
             "print(seen)\n")
    env = {key: value for key, value in __import__("os").environ.items() if key != "PYTORCH_ENABLE_MPS_FALLBACK"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.stdout.strip() == "['1']", result.stderr
