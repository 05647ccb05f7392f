"""What the pipelines need from each student region, and the student check that catches its absence.

Each entry breaks one behaviour in a copy of the solution (one or more exact source replacements,
each of which must match once) and names the student checks (a pytest -k expression on
tests/student) of which at least one must then fail. tests/test_instructor.py applies them to the
filled CMU skeleton (which has every region) and runs the checks. When a region's code changes
shape, an entry whose text is gone fails by name: update its text to break the same behaviour.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    region: str
    behaviour: str
    path: str
    replacements: tuple  # ((old, new), ...)
    caught_by: str  # pytest -k expression of the student checks that must notice


def _m(region, behaviour, path, replacements, caught_by):
    return Mutation(region, behaviour, path, tuple(replacements), caught_by)


MUTATIONS = [
    # llama.py:RMSNorm._norm, LayerNorm._norm
    _m("RMSNorm._norm", "eps inside the root", "llama.py",
       [("x.pow(2).mean(-1, keepdim=True) + self.eps)", "x.pow(2).mean(-1, keepdim=True)) + self.eps")],
       "rmsnorm"),
    _m("LayerNorm._norm", "biased variance", "llama.py",
       [("variance = (x - mean).pow(2).mean(-1, keepdim=True)", "variance = x.var(-1, keepdim=True)")],
       "layernorm"),
    # rope.py:apply_rotary_emb
    _m("apply_rotary_emb", "positions given (KV cache step, per row)", "rope.py",
       [("    if positions is None:\n        if T > max_seq_len:", "    if True:\n        if T > max_seq_len:")],
       "rope_takes_positions"),
    _m("apply_rotary_emb", "the dtype of its inputs", "rope.py",
       [("rotated = rotated.flatten(-2).type_as(query)", "rotated = rotated.flatten(-2)")], "rope_keeps_the_dtype"),
    # llama.py:Attention.compute_query_key_value_scores (the unfused path)
    _m("Attention.compute_query_key_value_scores", "scaling by sqrt(head_dim)", "llama.py",
       [("scores = query @ key.transpose(-2, -1) / math.sqrt(self.head_dim)", "scores = query @ key.transpose(-2, -1)")],
       "attention_scores_match"),
    _m("Attention.compute_query_key_value_scores", "a given mask", "llama.py",
       [("        if mask is None:\n            mask = causal_mask(", "        if True:\n            mask = causal_mask(")],
       "attention_scores_take_a_mask"),
    _m("Attention.compute_query_key_value_scores", "causality against cached keys (T < S)", "llama.py",
       [("mask = causal_mask(query.shape[2], key.shape[2], device=query.device)",
         "mask = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril()")],
       "attention_scores_take_a_mask"),
    _m("Attention.compute_query_key_value_scores", "self.attn_dropout", "llama.py",
       [("        probabilities = self.attn_dropout(probabilities)\n", "")], "attention_scores_apply_attn_dropout"),
    # llama.py:Attention.forward
    _m("Attention.forward", "grouped-query heads with repeat_interleave", "llama.py",
       [("key = key.repeat_interleave(self.n_rep, dim=1)", "key = key.repeat(1, self.n_rep, 1, 1)"),
        ("value = value.repeat_interleave(self.n_rep, dim=1)", "value = value.repeat(1, self.n_rep, 1, 1)")],
       "attention_forward_matches"),
    _m("Attention.forward", "positions", "llama.py",
       [("self.max_seq_len, self.rope_theta, positions)", "self.max_seq_len, self.rope_theta)")],
       "attention_forward_with_a_kv_cache"),
    _m("Attention.forward", "the KV cache", "llama.py",
       [("            key, value = kv_cache.append(key, value)", "            pass")],
       "attention_forward_with_a_kv_cache"),
    _m("Attention.forward", "the mask, fused and unfused", "llama.py",
       [("output = self._fused_attention(query, key, value, mask)", "output = self._fused_attention(query, key, value, None)"),
        ("output = self.compute_query_key_value_scores(query, key, value, mask)",
         "output = self.compute_query_key_value_scores(query, key, value)")],
       "attention_forward_with_a_padding_mask"),
    _m("Attention.forward", "the unfused path through compute_query_key_value_scores", "llama.py",
       [("        if self.fused:\n", "        if True:\n")], "unfused_attention_forward"),
    _m("Attention.forward", "self.resid_dropout", "llama.py",
       [("return self.resid_dropout(self.compute_output(output))", "return self.compute_output(output)")],
       "resid_dropout"),
    # llama.py:FeedForward.SwiGLU
    _m("FeedForward.SwiGLU", "the SiLU gate", "llama.py",
       [("return F.silu(self.w1(x)) * self.w3(x)", "return self.w1(x) * self.w3(x)")], "swiglu"),
    # llama.py:LlamaLayer.forward
    _m("LlamaLayer.forward", "pre-norm residual blocks", "llama.py",
       [("return h + self.feed_forward(self.ffn_norm(h))", "return h + self.feed_forward(h)")], "layer_is_two"),
    _m("LlamaLayer.forward", "positions, mask and cache handed on", "llama.py",
       [("self.attention(self.attention_norm(x), positions, mask, kv_cache)", "self.attention(self.attention_norm(x))")],
       "layer_is_given"),
    # llama.py:Llama.forward
    _m("Llama.forward", "logits of the last position only without targets", "llama.py",
       [("logits = self.output(h if targets is not None else h[:, [-1], :])", "logits = self.output(h)")],
       "model_forward_runs"),
    _m("Llama.forward", "the padding mask", "llama.py",
       [("        if attention_mask is None:\n            positions, mask =", "        if True:\n            positions, mask =")],
       "model_forward_with_a_padding_mask"),
    _m("Llama.forward", "finite pad rows (each token sees itself)", "llama.py",
       [("mask = padding_aware_mask(attention_mask, seq_len)",
         "mask = causal_mask(seq_len, attention_mask.shape[1], device=tokens.device) & attention_mask[:, None, None, :].bool()")],
       "model_forward_with_a_padding_mask"),
    _m("Llama.forward", "per-row positions", "llama.py",
       [("positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]",
         "positions = torch.arange(past, past + seq_len, device=tokens.device)")],
       "model_forward_counts_positions"),
    _m("Llama.forward", "positions after the cached ones", "llama.py",
       [("past = kv_cache[0].length if kv_cache is not None else 0", "past = 0")],
       "model_forward_with_a_kv_cache"),
    _m("Llama.forward", "the KV cache handed to the layers", "llama.py",
       [("kv_cache[i] if kv_cache is not None else None)", "None)")], "model_forward_with_a_kv_cache"),
    _m("Llama.forward", "refusing more than max_seq_len positions", "llama.py",
       [("raise ValueError(f\"{past + seq_len} positions exceed", "print(f\"{past + seq_len} positions exceed")],
       "model_forward_refuses"),
    _m("Llama.forward", "the embedding dropout", "llama.py",
       [("h = self.dropout(self.tok_embeddings(tokens))", "h = self.tok_embeddings(tokens)")], "embedding_dropout"),
    # llama.py:sample_next_token
    _m("sample_next_token", "temperature", "llama.py",
       [("F.softmax(logits.float() / temperature, dim=-1)", "F.softmax(logits.float(), dim=-1)")], "tempered"),
    _m("sample_next_token", "greedy at temperature 0", "llama.py",
       [("    if temperature == 0.0:\n        return logits.argmax(dim=-1, keepdim=True)\n", "    temperature = temperature or 1.0\n")],
       "temperature_zero"),
    _m("sample_next_token", "epsilon", "llama.py", [("    if epsilon > 0:\n", "    if False:\n")], "sampling_filters"),
    _m("sample_next_token", "top_k", "llama.py", [("    if top_k is not None:\n        kth", "    if False:\n        kth")],
       "sampling_filters"),
    _m("sample_next_token", "top_p", "llama.py", [("    if top_p is not None:\n        sorted", "    if False:\n        sorted")],
       "sampling_filters"),
    _m("sample_next_token", "the most likely token survives", "llama.py",
       [("    keep |= probabilities == probabilities.max(dim=-1, keepdim=True).values\n", "")], "sampling_filters"),
    _m("sample_next_token", "refusing meaningless filters", "llama.py",
       [("        raise ValueError(f\"top_k must be", "        print(f\"top_k must be"),
        ("        raise ValueError(f\"top_p must be", "        print(f\"top_p must be")],
       "refuses_meaningless"),
    # llama.py:Llama.generate
    _m("Llama.generate", "the context cropped to max_seq_len", "llama.py",
       [("start = max(0, end - max_seq_len)", "start = 0")], "crops_the_context"),
    _m("Llama.generate", "the cache restarted when the window slides", "llama.py",
       [("elif kv_cache is None or start > 0:", "elif kv_cache is None:")], "crops_the_context"),
    _m("Llama.generate", "epsilon, top_k and top_p passed on", "llama.py",
       [("sample_next_token(logits[:, -1, :], temperature, epsilon, top_k, top_p)",
         "sample_next_token(logits[:, -1, :], temperature)")], "passes_its_sampling_options"),
    _m("Llama.generate", "the attention mask of left-padded prompts", "llama.py",
       [("window_mask = mask[:, start:end] if attention_mask is not None else None", "window_mask = None")],
       "left_padded_prompts"),
    _m("Llama.generate", "the attention mask without the cache", "llama.py",
       [("logits, _ = self(window, attention_mask=window_mask)\n", "logits, _ = self(window)\n")],
       "left_padded_prompts"),
    _m("Llama.generate", "a stopped row repeats its stop token", "llama.py",
       [("                next_token = torch.where(finished, tokens[:, end - 1], next_token)\n", "")],
       "stop_token"),
    _m("Llama.generate", "stopping when every row has stopped", "llama.py",
       [("                return tokens[:, :end + 1]\n", "                pass\n")], "stop_token"),
    # optimizer.py:AdamW.step
    _m("AdamW.step", "bias correction", "optimizer.py",
       [("                if group[\"correct_bias\"]:\n", "                if False:\n")], "first_adam_step"),
    _m("AdamW.step", "correct_bias=False", "optimizer.py",
       [("                if group[\"correct_bias\"]:\n", "                if True:\n")], "without_bias_correction"),
    _m("AdamW.step", "decoupled weight decay", "optimizer.py",
       [("p.add_(p, alpha=-lr * group[\"weight_decay\"])", "p.add_(p, alpha=-step_size * group[\"weight_decay\"])")],
       "decoupled"),
    _m("AdamW.step", "each group's learning rate", "optimizer.py",
       [("            lr = group[\"lr\"]\n", "            lr = self.defaults[\"lr\"]\n")], "each_parameter_group"),
    _m("AdamW.step", "the closure's loss", "optimizer.py", [("                loss = closure()", "                closure()")],
       "closure"),
    _m("AdamW.step", "clipping to max_grad_norm (CMU)", "optimizer.py",
       [("(group[\"max_grad_norm\"] / (total_norm + 1e-6)).clamp(max=1.0)", "(group[\"max_grad_norm\"] / (total_norm + 1e-6))")],
       "course_reference"),
    # classifier.py:LlamaEmbeddingClassifier.forward
    _m("LlamaEmbeddingClassifier.forward", "the mask handed to the Llama", "classifier.py",
       [("self.llama(input_ids, attention_mask=attention_mask)", "self.llama(input_ids)")], "padded_batch"),
    _m("LlamaEmbeddingClassifier.forward", "the last real token", "classifier.py",
       [("            last_positions = last_real_positions(attention_mask)",
         "            last_positions = torch.full((batch_size,), seq_len - 1, device=input_ids.device)")],
       "padded_batch"),
    _m("LlamaEmbeddingClassifier.forward", "the classifier's dropout", "classifier.py",
       [("self.classifier_head(self.dropout(last))", "self.classifier_head(last)")], "applies_its_dropout"),
    # lora.py:LoRALayer.forward
    _m("LoRALayer.forward", "alpha / rank scaling", "lora.py",
       [("return frozen + self.scaling * update", "return frozen + update")], "scaled_low_rank"),
    _m("LoRALayer.forward", "dropout on the adapter's input only", "lora.py",
       [("low_rank = self.dropout(x) @ self.lora_A.T", "low_rank = x @ self.lora_A.T")], "adapter_input"),
]
