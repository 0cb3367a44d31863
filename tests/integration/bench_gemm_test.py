#!/usr/bin/python3
"""`daedalus-bench-gemm --json` keeps its contract, and the CPU GEMM agrees with oneDNN's matmul.

Usage: /usr/bin/python3 tests/integration/bench_gemm_test.py --daedalus build/bin/daedalus
(daedalus-bench-gemm is found beside daedalus).

On the tiny preset in bf16 and in FP8, on the active tier and on the forced `generic` tier: the
program exits 0, which it does only when every output of every product equals oneDNN's within
the bound it states (float rounding where neither side rounds activations to bf16); the object
has every key, one result per group and token count asked for, and product counts and FLOPs
that follow from the config. Timings are not asserted. Standard library only.
"""
import json
import os
import tempfile

from harness import ENV, check, daedalus, describe, finish, json_output, run

TOKENS = (1, 5)
GROUPS = ("attention", "dense_mlp", "experts", "lm_head")


def bench(program, model, env, what):
    proc = run([program, "--model", model, "--tokens", ",".join(map(str, TOKENS)), "--reps", "2", "--json"],
               timeout=300, env=env)
    # It exits 0 only where every output agrees with oneDNN's.
    return json_output(proc, f"{what}: daedalus-bench-gemm --json")


def expected_products(c, group, tokens):
    layers, dense = c["num_hidden_layers"], c["first_k_dense_replace"]
    moe = layers - dense
    if group == "attention":  # q_a and q_b (or q_proj), kv_a, kv_b, o
        return layers * (5 if c.get("q_lora_rank") else 4)
    if group == "dense_mlp":  # gate, up, down of the dense layers and of the shared experts
        return 3 * (dense + (moe if c.get("n_shared_experts") else 0))
    if group == "experts":  # the experts `tokens` touch in each MoE layer
        return 3 * moe * min(c["n_routed_experts"], tokens * c["num_experts_per_tok"])
    return 1


def main():
    d = daedalus()
    program = os.path.join(os.path.dirname(os.path.abspath(d)), "daedalus-bench-gemm")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("bf16", "fp8"):
            model = os.path.join(tmp, dtype)
            made = run([d, "make-model", "--preset", "tiny", "--dtype", dtype, "--out", model], timeout=300)
            if not check(made.returncode == 0, f"make-model tiny {dtype}", describe(made)):
                continue
            c = json.load(open(os.path.join(model, "config.json")))
            for isa in (None, "generic"):
                env = dict(ENV, OMP_NUM_THREADS="2")
                if isa:
                    env["DAEDALUS_CPU_ISA"] = isa
                what = f"{dtype}, tier {isa or 'active'}"
                j = bench(program, model, env, what)
                if j is None:
                    continue
                machine = j.get("machine", {})
                check(all(k in machine for k in ("cpu", "isa", "threads", "numa_nodes")) and machine["threads"] == 2,
                      f"{what}: machine has cpu, isa, threads (2) and numa_nodes", str(machine))
                if isa:
                    check(machine.get("isa") == isa, f"{what}: the forced tier is the one reported", str(machine))
                onednn = j.get("onednn", {})
                check(onednn.get("version") and onednn.get("dtype") in ("bf16", "f32") and onednn.get("impl"),
                      f"{what}: oneDNN's version, dtype and implementation are named", str(onednn))
                check(j.get("weights") == {"bf16": "BF16", "fp8": "F8_E4M3"}[dtype],
                      f"{what}: the weights are the checkpoint's dtype", repr(j.get("weights")))
                for key in ("bandwidth_gbs", "fp32_peak_gflops", "bf16_peak_gflops"):
                    check(isinstance(j.get(key), (int, float)) and j[key] > 0, f"{what}: {key} is positive",
                          repr(j.get(key)))
                if machine.get("isa") in ("avx512", "avx2", "generic") and onednn.get("dtype") == "f32":
                    check(j.get("max_rel_error_bound") == 1e-4,
                          f"{what}: float activations on both sides are held to float rounding",
                          repr(j.get("max_rel_error_bound")))
                results = j.get("results", [])
                got = sorted((r.get("group"), r.get("tokens")) for r in results)
                check(got == sorted((g, t) for g in GROUPS for t in TOKENS),
                      f"{what}: one result per group and token count", repr(got))
                for r in results:
                    name = f"{what}: {r.get('group')} at {r.get('tokens')} tokens"
                    want = expected_products(c, r.get("group"), r.get("tokens"))
                    check(r.get("products") == want, f"{name}: {want} products, as the config has",
                          repr(r.get("products")))
                    check(0 <= r.get("max_rel_error", 1) <= j.get("max_rel_error_bound", 0),
                          f"{name}: agrees with oneDNN within the bound",
                          f"{r.get('max_rel_error')} against {j.get('max_rel_error_bound')}")
                    if r.get("group") == "lm_head":
                        flop = 2 * r["tokens"] * c["vocab_size"] * c["hidden_size"] / 1e9
                        check(abs(r.get("gflop", 0) - flop) <= 1e-9 * max(flop, 1),
                              f"{name}: gflop is 2 x tokens x vocab x hidden", f"{r.get('gflop')} against {flop}")
                    for side in ("daedalus", "onednn"):
                        s = r.get(side, {})
                        check(all(isinstance(s.get(k), (int, float)) and s[k] > 0
                                  for k in ("seconds", "gflops", "weight_gb", "share_of_roofline")),
                              f"{name}: {side}'s figures are positive", str(s))
                    if r.get("speedup"):
                        ratio = r["onednn"]["seconds"] / r["daedalus"]["seconds"]
                        check(abs(r["speedup"] - ratio) <= 1e-9 * ratio, f"{name}: speedup is oneDNN's time over ours",
                              f"{r['speedup']} against {ratio}")
    finish()


if __name__ == "__main__":
    main()
