"""Real pretrained weights through our reader and model, against transformers' LlamaForCausalLM,
an independent implementation: stories260K (llama2.c .bin, GQA) and SmolLM2-135M (GGUF,
Q4_1-quantised, GQA, RoPE theta 100000). Logits must agree to 1e-4 and greedy continuations
token for token, with and without our key/value cache."""

import pytest
import torch

from testkit import require_module
from config import LlamaConfig
from llama import Llama, load_pretrained

transformers = require_module("transformers")

PROMPT = ("I have wanted to see this thriller for a while, and it didn't disappoint. "
          "Keanu Reeves, playing the hero John Wick, is")  # DESIGN.md's generation prompt


def to_transformers(model: Llama) -> "transformers.LlamaForCausalLM":
    """The same network as a transformers LlamaForCausalLM, in float32, eval mode.

    RoPE rotates pairs of query/key features. We (like llama2.c and Meta) pair neighbours,
    (x[2i], x[2i+1]); transformers pairs the two halves of each head, (x[i], x[i + head_dim/2]).
    Permuting the rows of the q/k projections within each head, 2i -> i and 2i+1 -> i + head_dim/2,
    turns one layout into the other; the attention scores are unchanged by it."""
    c: LlamaConfig = model.config
    hf_config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_hidden_dim,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
        max_position_embeddings=c.max_seq_len, rms_norm_eps=c.layer_norm_eps, rope_theta=c.rope_theta,
        tie_word_embeddings=c.tie_word_embeddings, hidden_act="silu", attention_bias=False, mlp_bias=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)

    def rotate_half_layout(weight, n_heads):  # (n_heads * head_dim, dim), rows in pairs per head
        return weight.view(n_heads, c.head_dim // 2, 2, c.dim).transpose(1, 2).reshape(-1, c.dim)

    ours = model.state_dict()
    theirs = {"model.embed_tokens.weight": ours["tok_embeddings.weight"], "model.norm.weight": ours["norm.weight"],
              "lm_head.weight": ours["output.weight"]}
    for i in range(c.n_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        theirs.update({
            q + "input_layernorm.weight": ours[p + "attention_norm.weight"],
            q + "post_attention_layernorm.weight": ours[p + "ffn_norm.weight"],
            q + "self_attn.q_proj.weight": rotate_half_layout(ours[p + "attention.compute_query.weight"], c.n_heads),
            q + "self_attn.k_proj.weight": rotate_half_layout(ours[p + "attention.compute_key.weight"], c.n_kv_heads),
            q + "self_attn.v_proj.weight": ours[p + "attention.compute_value.weight"],
            q + "self_attn.o_proj.weight": ours[p + "attention.compute_output.weight"],
            q + "mlp.gate_proj.weight": ours[p + "feed_forward.w1.weight"],
            q + "mlp.down_proj.weight": ours[p + "feed_forward.w2.weight"],
            q + "mlp.up_proj.weight": ours[p + "feed_forward.w3.weight"],
        })
    with torch.device("meta"):  # skip the random initialisation: every weight is assigned below
        hf_model = transformers.LlamaForCausalLM(hf_config)
    hf_model.load_state_dict(theirs, strict=True, assign=True)
    hf_model.tie_weights()
    hf_model.model.rotary_emb = type(hf_model.model.rotary_emb)(hf_config)  # its buffers were on meta
    return hf_model.float().eval()


def compare_logits(ours: Llama, theirs, sequences: torch.Tensor):
    with torch.inference_mode():
        logits, _ = ours(sequences, targets=sequences)  # (B, T, V): every position
        expected = theirs(sequences).logits
    difference = (logits - expected).abs().max().item()
    assert difference <= 1e-4, f"max |logits difference| {difference:.2e}"


def compare_greedy(ours: Llama, theirs, prompt: torch.Tensor, n_tokens: int) -> torch.Tensor:
    cached = ours.generate(prompt, n_tokens, temperature=0.0, use_cache=True)
    uncached = ours.generate(prompt, n_tokens, temperature=0.0, use_cache=False)
    with torch.inference_mode():
        expected = theirs.generate(prompt, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                                   attention_mask=torch.ones_like(prompt))
    assert cached.tolist() == expected.tolist()
    assert uncached.tolist() == expected.tolist()
    return cached


# --- stories260K (llama2.c .bin v0) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def stories260k(stories260k_path):
    return load_pretrained(stories260k_path)


def test_stories260k_config(stories260k):
    c = stories260k.config
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_hidden_dim, c.vocab_size, c.max_seq_len) == \
        (64, 5, 8, 4, 172, 512, 512)


@pytest.mark.slow
def test_stories260k_matches_transformers(stories260k):
    theirs = to_transformers(stories260k)
    # Text the model itself samples (it is in-distribution, unlike random ids, whose extreme
    # activations stretch float32 round-off past 1e-4 after 64 positions).
    torch.manual_seed(0)
    stories = stories260k.generate(torch.ones(3, 1, dtype=torch.long), 63, temperature=1.0, epsilon=0.0)
    compare_logits(stories260k, theirs, stories)
    # Its 512-piece tokenizer is not available: prompt with BOS (1) and a few token ids.
    prompt = torch.tensor([[1, 403, 407, 261, 378, 429]])
    out = compare_greedy(stories260k, theirs, prompt, 40)
    assert len(set(out[0, 6:].tolist())) > 3  # a trained model does not just repeat one token


# --- SmolLM2-135M (GGUF, Q4_1) --------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_transformers(smollm2):
    return to_transformers(smollm2)


@pytest.mark.slow
def test_smollm2_config(smollm2):
    c = smollm2.config
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_hidden_dim, c.vocab_size) == (576, 30, 9, 3, 1536, 49152)
    assert c.rope_theta == 100000.0 and c.tie_word_embeddings


@pytest.mark.slow
def test_smollm2_dequantisation_matches_transformers(smollm2_path, smollm2):
    """Our reader (gguf.quants, numpy) against transformers' own torch dequantiser, on the Q8_0
    embedding and a Q4_1 query projection: same values, same orientation."""
    from gguf import GGUFReader
    from transformers.integrations.gguf.dequant import dequantize

    tensors = {t.name: t for t in GGUFReader(smollm2_path).tensors}  # the file's own quantised data
    for gguf_name, ours in (("token_embd.weight", smollm2.tok_embeddings.weight),
                            ("blk.0.attn_q.weight", smollm2.layers[0].attention.compute_query.weight)):
        tensor = tensors[gguf_name]
        theirs = dequantize(torch.from_numpy(tensor.data.copy()), int(tensor.tensor_type))
        assert torch.equal(theirs.reshape(ours.shape), ours.detach()), gguf_name


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2, smollm2_transformers, smollm2_tokenizer):
    prompt = torch.tensor([smollm2_tokenizer.encode(PROMPT, bos=False, eos=False)])
    torch.manual_seed(0)
    compare_logits(smollm2, smollm2_transformers, torch.cat([prompt, torch.randint(0, 49152, (1, 24))], dim=1))
    compare_logits(smollm2, smollm2_transformers, torch.randint(0, 49152, (2, 16)))


@pytest.mark.slow
def test_smollm2_greedy_continuation(smollm2, smollm2_transformers, smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    prompt = torch.tensor([tokenizer.encode(PROMPT, bos=False, eos=False)])
    out = compare_greedy(smollm2, smollm2_transformers, prompt, 40)
    text = tokenizer.decode(out[0, prompt.shape[1]:])
    print(f"\nSmolLM2 greedy: {PROMPT}{text}")
    # Fluent English: mostly common words, letters and punctuation, no byte soup.
    words = text.lower().replace(".", " ").replace(",", " ").split()
    common = {"the", "a", "an", "and", "of", "to", "in", "is", "was", "he", "his", "who", "that", "with", "as", "for"}
    assert text.isascii() and len(words) >= 20
    assert len(common.intersection(words)) >= 3, text
