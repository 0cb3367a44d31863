#!/usr/bin/python3
"""Independent NumPy reference of the DeepSeek-V2 / V2-Lite / V3 forward pass.

Golden reference for the engine's tests; follows /work/shared/MODEL-SEMANTICS.md.
Deliberately simple rather than fast:
  * all math in float64 (weights upcast once, FP8 block-dequantized),
  * the whole sequence is recomputed for every generated token (no KV cache),
  * naive MLA: k_nope and v are decompressed per head through kv_b_proj,
  * causal mask, greedy decoding (argmax, lowest index on ties).

Usage:
  /usr/bin/python3 tests/reference/deepseek_ref.py --model DIR --prompt-ids 1,2,3 \
      --max-new-tokens N --out FILE.json [--all-logits]

Output JSON: {"prompt_ids": [...], "logits": [[vocab floats] per prompt position],
              "generated_ids": [...]} and, with --all-logits, "all_logits": one row per
fed position (prompt tokens, then every generated token except the last).
Uses only numpy and the standard library.
"""
import argparse
import json
import math
import os

import numpy as np


# ----------------------------------------------------------------------------------------------
# Safetensors reading and dequantization
# ----------------------------------------------------------------------------------------------

def _e4m3fn_table():
    """256-entry lookup: FP8 e4m3fn code -> float64 (bias 7, no inf, NaN at 0x7F/0xFF)."""
    table = np.zeros(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exp = (code >> 3) & 0xF
        man = code & 0x7
        if exp == 0xF and man == 0x7:
            table[code] = np.nan
        elif exp == 0:                       # subnormal: 2^(1-7) * man/8
            table[code] = sign * 2.0 ** -6 * (man / 8.0)
        else:
            table[code] = sign * 2.0 ** (exp - 7) * (1.0 + man / 8.0)
    return table


E4M3FN = _e4m3fn_table()


class SafetensorsFile:
    """Minimal reader: u64 LE header length, JSON header, then raw little-endian data."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n).decode("utf-8"))
        header.pop("__metadata__", None)
        self.header = header
        self.data_start = 8 + n
        self.mm = np.memmap(path, dtype=np.uint8, mode="r")

    def raw(self, name):
        """Returns (dtype string, shape, numpy array of the stored values, not dequantized)."""
        info = self.header[name]
        begin, end = info["data_offsets"]
        buf = self.mm[self.data_start + begin:self.data_start + end]
        dt, shape = info["dtype"], tuple(info["shape"])
        if dt == "F32":
            arr = buf.view("<f4")
        elif dt == "F64":
            arr = buf.view("<f8")
        elif dt == "F16":
            arr = buf.view("<f2")
        elif dt == "BF16":                   # bf16 = upper 16 bits of a float32
            arr = (buf.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "F8_E4M3":
            arr = buf.view(np.uint8)         # codes; decoded by the caller
        elif dt in ("I64", "I32", "I16", "I8", "U8"):
            arr = buf.view({"I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1"}[dt])
        else:
            raise ValueError("unsupported safetensors dtype %s for %s" % (dt, name))
        return dt, shape, arr.reshape(shape)


class Checkpoint:
    """config.json + one or more safetensors shards; weights returned as float64, cached."""

    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.cfg = json.load(f)
        index = os.path.join(model_dir, "model.safetensors.index.json")
        files = {}
        self.where = {}                      # tensor name -> SafetensorsFile
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            for name, fname in weight_map.items():
                if fname not in files:
                    files[fname] = SafetensorsFile(os.path.join(model_dir, fname))
                self.where[name] = files[fname]
        else:
            st = SafetensorsFile(os.path.join(model_dir, "model.safetensors"))
            self.where = {name: st for name in st.header}
        qc = self.cfg.get("quantization_config") or {}
        self.block = qc.get("weight_block_size", [128, 128])
        self.cache = {}

    def has(self, name):
        return name in self.where

    def dtype(self, name):
        return self.where[name].header[name]["dtype"]

    def get(self, name):
        if name not in self.cache:
            dt, shape, arr = self.where[name].raw(name)
            if dt == "F8_E4M3":
                # Block-scaled FP8: w[m, n] = value(code[m, n]) * scale_inv[m // bm, n // bn].
                w = E4M3FN[arr]
                _, _, s = self.where[name + "_scale_inv"].raw(name + "_scale_inv")
                s = s.astype(np.float64)
                bm, bn = self.block
                assert s.shape == (-(-shape[0] // bm), -(-shape[1] // bn)), (name, s.shape)
                s_full = np.repeat(np.repeat(s, bm, axis=0), bn, axis=1)[:shape[0], :shape[1]]
                w = w * s_full
            else:
                w = arr.astype(np.float64)
            self.cache[name] = w
        return self.cache[name]


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------

def linear(x, w):
    """W stored [out, in]; y = x @ W^T."""
    return x @ w.T


def round_bf16(x):
    """float64 -> float32 -> bf16 (round to nearest even) -> float64."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


E4M3_POSITIVE = E4M3FN[:0x7f]                # codes 0..0x7e: every finite value >= 0, ascending


def round_e4m3(x):
    """Nearest e4m3fn value, ties to the even code, saturating at +-448."""
    a = np.minimum(np.abs(x), 448.0)
    hi = np.minimum(np.searchsorted(E4M3_POSITIVE, a), 0x7e)    # first code whose value >= a
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = a - E4M3_POSITIVE[lo], E4M3_POSITIVE[hi] - a
    code = np.where((d_lo < d_hi) | ((d_lo == d_hi) & (lo % 2 == 0)), lo, hi)
    return np.sign(x) * E4M3_POSITIVE[code]


def cache_latent(c_kv, k_pe, kv_dtype):
    """What the latent cache gives back for rows of c_kv and rotated k_pe. f32: exact. bf16:
    both rounded to bf16. fp8 (FlashMLA's format): per token and block of 128 values,
    scale = max|v| / 448 in float32 and each value rounded to e4m3 times it; k_pe in bf16."""
    if kv_dtype == "f32":
        return c_kv, k_pe
    if kv_dtype == "bf16":
        return round_bf16(c_kv), round_bf16(k_pe)
    out = np.zeros_like(c_kv)
    for b in range(0, c_kv.shape[1], 128):
        block = c_kv[:, b:b + 128].astype(np.float32)
        scale = np.abs(block).max(axis=1, keepdims=True) / np.float32(448)
        ratio = (block / np.where(scale > 0, scale, np.float32(1))).astype(np.float64)
        out[:, b:b + 128] = np.where(scale > 0, round_e4m3(ratio) * scale.astype(np.float64), 0.0)
    return out, round_bf16(k_pe)


def rms_norm(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def topk_indices(v, k):
    """Indices of the k largest entries of a 1-D array, largest first, lowest index on ties."""
    return np.argsort(-v, kind="stable")[:k]


def yarn_mscale(f, s):
    return 0.1 * s * math.log(f) + 1.0 if f > 1 else 1.0


def rope_params(cfg):
    """Returns (inv_freq [dr/2], cos/sin multiplier, softmax-scale multiplier m^2)."""
    dr, theta = cfg["qk_rope_head_dim"], float(cfg["rope_theta"])
    base = 1.0 / theta ** (np.arange(0, dr, 2, dtype=np.float64) / dr)
    rs = cfg.get("rope_scaling")
    if not rs or rs.get("type", rs.get("rope_type")) != "yarn":
        return base, 1.0, 1.0
    f = float(rs["factor"])
    L0 = float(rs["original_max_position_embeddings"])
    beta_fast, beta_slow = float(rs.get("beta_fast", 32)), float(rs.get("beta_slow", 1))
    mscale, mscale_all_dim = float(rs.get("mscale", 1)), float(rs.get("mscale_all_dim", 0))

    def corr(n):                             # dimension whose wavelength makes n turns in L0
        return dr * math.log(L0 / (2 * math.pi * n)) / (2 * math.log(theta))

    low = max(math.floor(corr(beta_fast)), 0)
    high = min(math.ceil(corr(beta_slow)), dr - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dr // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    inv_freq = base * (1.0 - ramp) + base / f * ramp
    cos_sin_mul = yarn_mscale(f, mscale) / yarn_mscale(f, mscale_all_dim)
    m = yarn_mscale(f, mscale_all_dim)       # = 1 when mscale_all_dim is 0/absent
    return inv_freq, cos_sin_mul, m * m


def apply_rope(x, positions, inv_freq, mul):
    """Interleaved (GPT-J) rotary: pair (x[..., 2i], x[..., 2i+1]) rotated by p * inv_freq[i].
    x: [T, ..., dr]; positions: [T]."""
    ang = positions[:, None].astype(np.float64) * inv_freq[None, :]          # [T, dr/2]
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (inv_freq.shape[0],)
    cos, sin = (np.cos(ang) * mul).reshape(shape), (np.sin(ang) * mul).reshape(shape)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

class DeepSeekRef:
    def __init__(self, model_dir, bf16_activations=False, kv_dtype="f32"):
        self.ck = Checkpoint(model_dir)
        self.bf16_activations = bf16_activations
        self.kv_dtype = kv_dtype
        self.cfg = self.ck.cfg
        self.inv_freq, self.rope_mul, self.mscale2 = rope_params(self.cfg)

    def w(self, name):
        return self.ck.get(name)

    def lin(self, x, name):
        """linear() with the checkpoint's weight `name`; with bf16_activations the input of a
        BF16 or FP8 projection is first rounded to bf16, as the CPU avx512bf16 tier computes."""
        if self.bf16_activations and self.ck.dtype(name) != "F32":
            x = round_bf16(x)
        return linear(x, self.w(name))

    def attention(self, i, x, positions):
        """Naive MLA over the whole sequence x [T, D] with a causal mask."""
        c, p = self.cfg, "model.layers.%d.self_attn." % i
        H, dn, dr, dv = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
        rkv, eps, T = c["kv_lora_rank"], c["rms_norm_eps"], x.shape[0]

        # Query.
        if c.get("q_lora_rank"):
            q = linear(rms_norm(self.lin(x, p + "q_a_proj.weight"),
                                self.w(p + "q_a_layernorm.weight"), eps),
                       self.w(p + "q_b_proj.weight"))
        else:
            q = self.lin(x, p + "q_proj.weight")
        q = q.reshape(T, H, dn + dr)
        q_nope, q_pe = q[..., :dn], q[..., dn:]

        # Latent: c_kv is normalised, the single shared rotary key k_pe is not.
        a = self.lin(x, p + "kv_a_proj_with_mqa.weight")
        c_kv = rms_norm(a[:, :rkv], self.w(p + "kv_a_layernorm.weight"), eps)
        k_pe = a[:, rkv:]                                                    # [T, dr]
        q_pe = apply_rope(q_pe, positions, self.inv_freq, self.rope_mul)     # [T, H, dr]
        k_pe = apply_rope(k_pe, positions, self.inv_freq, self.rope_mul)     # [T, dr]
        # Attention sees the latent as the cache stores it.
        c_kv, k_pe = cache_latent(c_kv, k_pe, self.kv_dtype)

        # Decompress per-head keys and values.
        kv = self.lin(c_kv, p + "kv_b_proj.weight").reshape(T, H, dn + dv)
        k_nope, v = kv[..., :dn], kv[..., dn:]

        scale = (dn + dr) ** -0.5 * self.mscale2
        scores = (np.einsum("thd,shd->hts", q_nope, k_nope)
                  + np.einsum("thd,sd->hts", q_pe, k_pe)) * scale                 # [H, T, S]
        causal = np.triu(np.ones((T, T), dtype=bool), k=1)                   # s > t masked
        scores = np.where(causal[None], -np.inf, scores)
        probs = softmax(scores, axis=-1)
        out = np.einsum("hts,shd->thd", probs, v).reshape(T, H * dv)
        return self.lin(out, p + "o_proj.weight")

    def mlp(self, prefix, x):
        g = self.lin(x, prefix + "gate_proj.weight")
        u = self.lin(x, prefix + "up_proj.weight")
        return self.lin(silu(g) * u, prefix + "down_proj.weight")

    def route(self, i, xt):
        """MoE routing for one token xt [D]. Returns (expert indices, weights)."""
        c, p = self.cfg, "model.layers.%d.mlp." % i
        E, k = c["n_routed_experts"], c["num_experts_per_tok"]
        method = c.get("topk_method", "greedy")
        logits = self.lin(xt, p + "gate.weight")
        if c.get("scoring_func", "softmax") == "sigmoid":
            s = sigmoid(logits)
        else:
            s = softmax(logits)
        # Correction bias (V3) only steers the selection; weights use unbiased s.
        bias_name = p + "gate.e_score_correction_bias"
        b = s + self.w(bias_name) if self.ck.has(bias_name) else s.copy()
        if method in ("noaux_tc", "group_limited_greedy"):
            G, keep = c["n_group"], c["topk_group"]
            grouped = b.reshape(G, E // G)
            if method == "noaux_tc":                 # V3: sum of each group's top-2 scores
                gscore = np.sort(grouped, axis=1)[:, ::-1][:, :2].sum(axis=1)
            else:                                    # V2: max of each group
                gscore = grouped.max(axis=1)
            kept = np.zeros(G, dtype=bool)
            kept[topk_indices(gscore, keep)] = True
            b = np.where(np.repeat(kept, E // G), b, -np.inf)
        elif method != "greedy":
            raise ValueError("unknown topk_method %r" % method)
        idx = topk_indices(b, k)
        wts = s[idx]
        if c.get("norm_topk_prob", False):
            wts = wts / wts.sum()
        return idx, wts * c.get("routed_scaling_factor", 1.0)

    def moe(self, i, x):
        c, p = self.cfg, "model.layers.%d.mlp." % i
        y = np.zeros_like(x)
        for t in range(x.shape[0]):                  # token by token, expert by expert
            idx, wts = self.route(i, x[t])
            for e, we in zip(idx, wts):
                y[t] += we * self.mlp(p + "experts.%d." % e, x[t:t + 1])[0]
        if c.get("n_shared_experts"):
            y += self.mlp(p + "shared_experts.", x)
        return y

    def is_moe_layer(self, i):
        c = self.cfg
        return (c.get("n_routed_experts") is not None
                and i >= c.get("first_k_dense_replace", 0)
                and i % c.get("moe_layer_freq", 1) == 0)

    def forward(self, ids):
        """Logits [T, vocab] for the token sequence ids at positions 0..T-1."""
        c, eps = self.cfg, self.cfg["rms_norm_eps"]
        positions = np.arange(len(ids))
        h = self.w("model.embed_tokens.weight")[np.asarray(ids)]
        for i in range(c["num_hidden_layers"]):     # MTP layers (index >= this) ignored
            p = "model.layers.%d." % i
            h = h + self.attention(i, rms_norm(h, self.w(p + "input_layernorm.weight"), eps), positions)
            x = rms_norm(h, self.w(p + "post_attention_layernorm.weight"), eps)
            h = h + (self.moe(i, x) if self.is_moe_layer(i) else self.mlp(p + "mlp.", x))
        h = rms_norm(h, self.w("model.norm.weight"), eps)
        head = "lm_head.weight"
        if not self.ck.has(head) and c.get("tie_word_embeddings"):
            head = "model.embed_tokens.weight"
        return self.lin(h, head)

    def generate(self, prompt_ids, max_new_tokens):
        """Greedy decoding with full recomputation each step.
        Returns (prompt logits rows, generated ids, rows for every fed position)."""
        seq = list(prompt_ids)
        logits = self.forward(seq)
        prompt_rows = logits
        all_rows = list(logits)
        generated = []
        for step in range(max_new_tokens):
            nxt = int(np.argmax(logits[-1]))        # argmax: lowest index on ties
            generated.append(nxt)
            seq.append(nxt)
            if step + 1 < max_new_tokens:           # the last generated token is never fed
                logits = self.forward(seq)
                all_rows.append(logits[-1])
        return prompt_rows, generated, np.array(all_rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint directory")
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    ap.add_argument("--max-new-tokens", type=int, default=0)
    ap.add_argument("--out", required=True, help="output JSON file")
    ap.add_argument("--all-logits", action="store_true",
                    help="also write rows for every fed position under 'all_logits'")
    ap.add_argument("--bf16-activations", action="store_true",
                    help="round the input of every BF16/FP8 projection to bf16 (the CPU avx512bf16 and amx tiers)")
    ap.add_argument("--kv-dtype", choices=["f32", "bf16", "fp8"], default="f32",
                    help="round the cached latent as the engine's --kv-dtype does (default: exact)")
    args = ap.parse_args()

    prompt = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
    if not prompt:
        ap.error("--prompt-ids must name at least one token")
    model = DeepSeekRef(args.model, args.bf16_activations, args.kv_dtype)
    prompt_rows, generated, all_rows = model.generate(prompt, args.max_new_tokens)
    out = {"prompt_ids": prompt,
           "logits": prompt_rows.tolist(),
           "generated_ids": generated}
    if args.all_logits:
        out["all_logits"] = all_rows.tolist()
    with open(args.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
