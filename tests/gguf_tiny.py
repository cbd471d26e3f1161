"""A tiny GGUF file written by the test itself (the `gguf` package), from a tiny Llama and its byte-level BPE
tokenizer: llama.cpp's tensor names, its q/k row order for rotary embeddings, float32 tensors (no quantisation,
so the loaded weights must equal the written ones)."""

from __future__ import annotations

import json
from pathlib import Path


def _rope_rows(w, n_head: int):
    """llama.cpp's order of the q/k projection rows (what transformers' loader undoes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model, tokenizer, path: str | Path) -> Path:
    """`model` (a Llama) and `tokenizer` as one GGUF file at `path`."""
    import gguf

    cfg = model.config
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    theta = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 1e4)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(theta))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    _add_tokenizer(w, tokenizer, cfg.vocab_size)
    for name, tensor in _tensors(model).items():
        w.add_tensor(name, tensor)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _add_tokenizer(w, tokenizer, vocab_size: int) -> None:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    by_id = {i: t for t, i in spec["vocab"].items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    special = set(tokenizer.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control, 1: normal
    w.add_token_scores([0.0] * len(tokens))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    if merges:  # a vocabulary no bigger than the byte alphabet has none
        w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_add_bos_token(True)  # as the tokenizer's own post-processor does
    w.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        w.add_pad_token_id(tokenizer.pad_token_id)


def _tensors(model) -> dict:
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    out["output.weight"] = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                t = _rope_rows(t, cfg.num_attention_heads)
            elif hf == "self_attn.k_proj":
                t = _rope_rows(t, cfg.num_key_value_heads)
            out[f"blk.{i}.{gg}.weight"] = t
    return out
