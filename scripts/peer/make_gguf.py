"""Writes a DeepSeek-V2/V3 checkpoint in the Hugging Face layout (BF16 or F32 weights, as
`daedalus make-model` writes them) as a GGUF file in llama.cpp's `deepseek2` layout, so that
llama.cpp runs exactly the same model.

The mapping follows llama.cpp's converter: MQA-style MLA (head_count_kv 1, key length
kv_lora_rank + qk_rope_head_dim), kv_b_proj split per head into attn_k_b (the k_nope block,
transposed to [kv_lora_rank, qk_nope_head_dim]) and attn_v_b ([v_head_dim, kv_lora_rank]), routed
experts stacked into one 3-D tensor per projection, norms and the correction bias in F32, and
the byte-level BPE vocabulary of tokenizer.json as a gpt2 tokenizer.

Usage: python make_gguf.py --model DIR --out FILE.gguf   (needs the PyPI packages gguf and numpy)
"""
import argparse
import json
import os
import sys

import numpy as np
import gguf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "reference"))
from deepseek_ref import Checkpoint  # noqa: E402  (our own safetensors reader)


def tensor(ck, name):
    """(values, bf16) where values keep the stored bits: uint16 for BF16, float32 otherwise."""
    dt, _, arr = ck.where[name].raw(name)
    if dt == "BF16":
        return (np.ascontiguousarray(arr).view(np.uint32) >> 16).astype(np.uint16), True
    if dt != "F32":
        raise SystemExit(f"{name}: dtype {dt} (make the checkpoint with --dtype bf16 or f32)")
    return np.ascontiguousarray(arr, dtype=np.float32), False


def add(writer, name, values, bf16):
    if bf16:
        writer.add_tensor(name, values, raw_dtype=gguf.GGMLQuantizationType.BF16)
    else:
        writer.add_tensor(name, values.astype(np.float32))


def f32(ck, name):
    values, bf16 = tensor(ck, name)
    return (values.astype(np.uint32) << 16).view(np.float32) if bf16 else values


def write_vocab(writer, model_dir, cfg):
    with open(os.path.join(model_dir, "tokenizer.json")) as f:
        tok = json.load(f)
    vocab = dict(tok["model"]["vocab"])
    special = set()
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        special.add(added["id"])
    n = cfg["vocab_size"]
    by_id = {i: t for t, i in vocab.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED
             for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("deepseek-v3")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(cfg.get("bos_token_id", 0))
    writer.add_eos_token_id(cfg.get("eos_token_id", 1))
    writer.add_add_bos_token(False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ck = Checkpoint(args.model)
    c = ck.cfg
    if c.get("rope_scaling"):
        raise SystemExit("rope_scaling is not mapped here; use a checkpoint without YaRN")
    L, H, E = c["num_hidden_layers"], c["num_attention_heads"], c.get("n_routed_experts") or 0
    dn, dr, dv, rkv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]
    w = gguf.GGUFWriter(args.out, "deepseek2")
    w.add_name("daedalus " + os.path.basename(os.path.normpath(args.model)))
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(L)
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(1)  # MLA as MQA over the latent
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_vocab_size(c["vocab_size"])
    w.add_leading_dense_block_count(c.get("first_k_dense_replace", 0))
    if c.get("q_lora_rank"):
        w.add_q_lora_rank(c["q_lora_rank"])
    w.add_kv_lora_rank(rkv)
    w.add_key_length(rkv + dr)
    w.add_value_length(rkv)
    w.add_key_length_mla(dn + dr)
    w.add_value_length_mla(dv)
    w.add_rope_dimension_count(dr)
    if E:
        w.add_expert_count(E)
        w.add_expert_used_count(c["num_experts_per_tok"])
        w.add_expert_feed_forward_length(c["moe_intermediate_size"])
        w.add_expert_shared_count(c.get("n_shared_experts") or 0)
        w.add_expert_weights_scale(c.get("routed_scaling_factor", 1.0))
        if c.get("norm_topk_prob"):
            w.add_expert_weights_norm(True)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID if c.get("scoring_func") == "sigmoid"
                                 else gguf.ExpertGatingFuncType.SOFTMAX)
        if c.get("n_group"):
            w.add_expert_group_count(c["n_group"])
            w.add_expert_group_used_count(c["topk_group"])
    write_vocab(w, args.model, c)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DEEPSEEK2, L)

    def put(hf, values=None, bf16=None, norm=False):
        gg = names.get_name(hf.removesuffix(".weight"))
        if gg is None:
            raise SystemExit(f"no GGUF name for {hf}")
        if norm:
            w.add_tensor(gg + ".weight", f32(ck, hf))
            return
        if values is None:
            values, bf16 = tensor(ck, hf)
        add(w, gg + ".weight", values, bf16)

    put("model.embed_tokens.weight")
    put("model.norm.weight", norm=True)
    put("lm_head.weight")
    for i in range(L):
        p = f"model.layers.{i}."
        put(p + "input_layernorm.weight", norm=True)
        put(p + "post_attention_layernorm.weight", norm=True)
        a = p + "self_attn."
        if c.get("q_lora_rank"):
            put(a + "q_a_proj.weight")
            put(a + "q_a_layernorm.weight", norm=True)
            put(a + "q_b_proj.weight")
        else:
            put(a + "q_proj.weight")
        put(a + "kv_a_proj_with_mqa.weight")
        put(a + "kv_a_layernorm.weight", norm=True)
        put(a + "o_proj.weight")
        kv_b, bf16 = tensor(ck, a + "kv_b_proj.weight")            # [H·(dn + dv), rkv]
        kv_b = kv_b.reshape(H, dn + dv, rkv)
        put(a + "k_b_proj.weight", np.ascontiguousarray(kv_b[:, :dn, :].transpose(0, 2, 1)), bf16)  # [H, rkv, dn]
        put(a + "v_b_proj.weight", np.ascontiguousarray(kv_b[:, dn:, :]), bf16)                     # [H, dv, rkv]
        m = p + "mlp."
        if not (E and i >= c.get("first_k_dense_replace", 0)):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                put(m + proj + ".weight")
            continue
        put(m + "gate.weight")
        bias = m + "gate.e_score_correction_bias"
        if bias in ck.where:
            w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.FFN_EXP_PROBS_B].format(bid=i) + ".bias", f32(ck, bias))
        for proj in ("gate_proj", "up_proj", "down_proj"):
            parts = [tensor(ck, f"{m}experts.{e}.{proj}.weight") for e in range(E)]
            put(f"{m}experts.{proj}.weight", np.stack([v for v, _ in parts]), parts[0][1])
            if c.get("n_shared_experts"):
                put(f"{m}shared_experts.{proj}.weight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
