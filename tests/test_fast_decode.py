"""Tests for fast_decode.py: its tokens against Llama.generate's and against a loop of full
forwards, its one-token step against Llama.forward's logits, for plain and grouped-query
attention, RMSNorm and LayerNorm, float32 and int8 layers, batch 1 and left-padded batches,
stop tokens, sampling, and the hand-back to Llama.generate where the window would slide."""

import importlib
import os
from pathlib import Path

import pytest
import torch

from llama import Llama
from lora import apply_lora
from minllama.inference import fast_decode
from minllama.inference.quantize import prepare_for_inference
from testkit import left_pad, manual_greedy, random_tokens, tiny_llama

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")

MODELS = {"mha": dict(n_kv_heads=4), "gqa": dict(n_kv_heads=2), "mqa": dict(n_kv_heads=1),
          "layernorm": dict(norm_type="layernorm")}


@pytest.mark.parametrize("kind", MODELS)
def test_step_logits_equal_a_full_forward(kind):
    """Reference: Llama.forward over the whole sequence, without a cache, at the last position."""
    model = tiny_llama(**MODELS[kind])
    idx = random_tokens(2, 9)
    step = fast_decode.DecodingStep(model)
    slots = torch.arange(20)
    with torch.no_grad():
        cache = model.new_kv_cache(2, 20)
        for layer_cache in cache:
            layer_cache.keys.fill_(1e4)  # never-written slots must stay hidden
            layer_cache.values.fill_(1e4)
        model(idx[:, :6], kv_cache=cache)
        for end in range(6, 9):  # feed tokens 6, 7, 8 one at a time
            got = step(idx[:, end], slots[end:end + 1], slots[end:end + 1], cache, (slots <= end)[None, None, None])
            want, _ = model(idx[:, :end + 1])
            torch.testing.assert_close(got, want[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", MODELS)
def test_greedy_tokens_equal_llama_generate_and_a_manual_loop(kind):
    model = tiny_llama(**MODELS[kind])
    idx = random_tokens(1, 5)
    out = fast_decode.generate(model, idx, 15, temperature=0.0)
    assert out.shape == (1, 20)
    assert torch.equal(out, model.generate(idx, 15, temperature=0.0))
    assert torch.equal(out, manual_greedy(model, idx, 15))
    assert len(set(out[0, 5:].tolist())) > 3  # a varied continuation: the comparison means something


def test_left_padded_batch_equals_llama_generate_and_each_prompt_alone():
    model = tiny_llama()
    prompts = [random_tokens(n) for n in (3, 7, 5)]
    idx, mask = left_pad(prompts)
    out = fast_decode.generate(model, idx, 10, temperature=0.0, attention_mask=mask)
    assert torch.equal(out, model.generate(idx, 10, temperature=0.0, attention_mask=mask))
    for row, prompt in enumerate(prompts):
        alone = fast_decode.generate(model, prompt[None], 10, temperature=0.0)
        assert torch.equal(out[row, 7:], alone[0, len(prompt):])


def test_stop_tokens_and_sampling_follow_llama_generate():
    """Same stops per row and early exit; same draws from the same seed (one multinomial per step)."""
    model = tiny_llama()
    idx = random_tokens(2, 4)
    free_run = model.generate(idx, 12, temperature=0.0)
    stops = {free_run[0, 6].item(), free_run[1, 7].item()}
    assert torch.equal(fast_decode.generate(model, idx, 12, temperature=0.0, stop_tokens=stops),
                       model.generate(idx, 12, temperature=0.0, stop_tokens=stops))
    runs = []
    for generate in (model.generate, lambda *a, **k: fast_decode.generate(model, *a, **k)):
        torch.manual_seed(3)
        runs.append(generate(idx, 15, temperature=1.0, epsilon=0.0, top_k=20))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_quantised_tokens_equal_the_quantised_model_through_llama_generate(bits):
    """The fused q/k/v and w1/w3 quantised layers compute what the separate ones do (per-row scales,
    per-group scales); every projection fills whole 64-row blocks, so that int4 fuses on AVX2 and AVX-512."""
    model = prepare_for_inference(tiny_llama(dim=64, n_kv_heads=4, hidden_dim=128), quantize=bits)
    assert fast_decode.covers(model, 20)
    idx = random_tokens(1, 5)
    assert torch.equal(fast_decode.generate(model, idx, 15, temperature=0.0), model.generate(idx, 15, temperature=0.0))


def test_bf16_autocast_runs_and_follows_llama_generate():
    """Under autocast (the GPU benches' --bf16) the projections are bf16 and the cache float32."""
    model = tiny_llama()
    idx = random_tokens(1, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast_decode.generate(model, idx, 10, temperature=0.0),
                           model.generate(idx, 10, temperature=0.0))


ABLATIONS = {"gelu": dict(ffn="gelu"), "alibi": dict(positional="alibi"),
             "differential": dict(attention="differential")}
# Their layers reach llama.py when architectures.py is imported (llama.ABLATED_LAYERS): imported here, so
# that this module passes alone too, not only after a module that imports it (test_architectures.py).
importlib.import_module("minllama.pretraining.architectures")


@pytest.mark.parametrize("case", ["window slides", "lora", "training", *ABLATIONS])
def test_what_the_fast_path_does_not_cover_goes_through_llama_generate(case, monkeypatch):
    """Past max_seq_len (24) Llama.generate re-encodes the window each step; LoRA-wrapped
    projections do not fuse; training mode has dropout; the pre-training ablations
    (architectures.py) compute another model: the fast path hands over to Llama.generate."""
    model = tiny_llama(dropout=0.1) if case == "training" else tiny_llama(**ABLATIONS.get(case, {}))
    idx = random_tokens(1, 20 if case == "window slides" else 5)
    if case == "lora":
        apply_lora(model, rank=2, alpha=1.0)
    model.train(case == "training")
    torch.manual_seed(1)
    want = model.generate(idx, 10, temperature=0.0)
    monkeypatch.setattr(fast_decode.DecodingStep, "forward", lambda *args: pytest.fail("the step ran"))
    torch.manual_seed(1)
    assert torch.equal(fast_decode.generate(model, idx, 10, temperature=0.0), want)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
@pytest.mark.slow
def test_compiled_step_gives_the_eager_tokens():
    """torch.compile of the step (`--compile`): one graph, the same greedy tokens. Skipped where
    inductor cannot build its C++ kernels (no compiler): compiling is never required."""
    model = tiny_llama()
    prompts = [random_tokens(n) for n in (3, 6)]
    idx, mask = left_pad(prompts)
    want = fast_decode.generate(model, idx, 10, temperature=0.0, attention_mask=mask)
    torch._dynamo.reset()
    try:
        got = fast_decode.generate(model, idx, 10, temperature=0.0, attention_mask=mask,
                                   step=fast_decode.DecodingStep(model, compile=True))
    except torch._dynamo.exc.BackendCompilerFailed as error:
        pytest.skip(f"inductor cannot compile here: {str(error).splitlines()[0]}")
    assert torch.equal(got, want)


@pytest.mark.slow
def test_compile_flag_is_for_generate_and_a_missing_compiler_is_one_line(tmp_path):
    import subprocess
    import sys

    import run_llama
    from config import LlamaConfig

    with pytest.raises(SystemExit):
        run_llama.get_args(["--option", "finetune", "--compile"])
    config = LlamaConfig(vocab_size=32000, dim=16, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=128)
    torch.manual_seed(0)
    torch.save({"model_args": config.to_dict(), "model": Llama(config).state_dict()}, tmp_path / "tiny.pt")
    env = {**os.environ, "PATH": str(tmp_path / "no-compilers-here"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    child = subprocess.run([sys.executable, "run_llama.py", "--option", "generate", "--compile",
                            "--pretrained-model-path", str(tmp_path / "tiny.pt"), "--out_dir", str(tmp_path / "out")],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode != 0 and "Traceback" not in child.stderr, child.stderr[-2000:]
    assert "--compile: torch.compile could not build its kernels here" in child.stderr


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, epsilon=0.0, top_p=0.9)])
def test_chat_replies_are_the_same_tokens_on_the_fast_path(sampling):
    """--option chat decodes on the fast path (chat.reply_tokens): greedy and seeded sampling give
    the tokens of Llama's own cache, as before."""
    from minllama.inference.chat import reply_tokens

    model = tiny_llama()
    prompt = random_tokens(1, 7)[0].tolist()
    step = fast_decode.DecodingStep(model)
    replies = []
    for fast in (step, None):
        torch.manual_seed(5)
        replies.append(list(reply_tokens(model, prompt, 12, fast, **sampling)))
    assert replies[0] == replies[1] and len(replies[0]) == 12
