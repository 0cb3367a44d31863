#!/usr/bin/python3
"""`daedalus bench --json` keeps its contract, and its figures are what they say they are.

Usage: /usr/bin/python3 tests/integration/bench_test.py --daedalus build/bin/daedalus

On the tiny preset (bf16), with --profile: the object has every key the README and the planner's
--calibrate read, typed and positive; decode figures are keyed by each batch asked for; the KV
bytes per token are the latent formula's (layers x (kv_lora_rank + qk_rope_head_dim) x 2 bytes,
plus paging); each --profile share list covers one repetition or one batch's steps, so it sums
to at most the whole; and a second run's kernel tier and machine are the first's. Timings are not
asserted (speed is bench's output, not a test's). Standard library only.
"""
import json
import os
import tempfile

from harness import ENV, check, daedalus, finish, json_output, make_model, run

BATCHES = (1, 4)


def bench(d, model, *extra):
    proc = run([d, "bench", "--model", model, "--prompt-len", "48", "--batches", ",".join(map(str, BATCHES)),
                "--steps", "4", "--reps", "20", "--json", *extra], timeout=120, env=dict(ENV, OMP_NUM_THREADS="2"))
    return json_output(proc, f"bench --json {' '.join(extra)}")


def positive(j, key):
    return isinstance(j.get(key), (int, float)) and j[key] > 0


def main():
    d = daedalus()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(d, tmp)
        config = json.load(open(os.path.join(model, "config.json")))
        j = bench(d, model, "--profile")
        if j is None:
            finish()
        machine = j.get("machine", {})
        check(all(k in machine for k in ("cpu", "isa", "threads", "numa_nodes")) and machine["threads"] == 2,
              "machine has cpu, isa, threads (2, as asked) and numa_nodes", str(machine))
        for key in ("bandwidth_gbs", "fp32_peak_gflops", "bf16_peak_gflops", "attention_peak_gflops", "prefill_tok_s",
                    "prefill_gflops", "kv_bytes_per_token", "peak_rss_mib"):
            check(positive(j, key), f"{key} is a positive number", repr(j.get(key)))
        # Absorbed attention over the bf16 cache runs on VDPBF16PS on avx512bf16 and amx (its own
        # probe, a timing that no test compares), and on the float FMA elsewhere: the same figure.
        if machine.get("isa") in ("avx512", "avx2", "generic"):
            check(j.get("attention_peak_gflops") == j.get("fp32_peak_gflops"),
                  "attention's limit is the float FMA's on a tier without bf16 attention",
                  f"{j.get('attention_peak_gflops')} against {j.get('fp32_peak_gflops')}")
        for key in ("decode_tok_s", "decode_roofline_tok_s"):
            got = j.get(key, {})
            check(sorted(got) == sorted(str(b) for b in BATCHES) and all(v > 0 for v in got.values()),
                  f"{key} is keyed by every batch asked for, each positive", repr(got))
        latent = config["num_hidden_layers"] * (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * 2
        kv = j.get("kv_bytes_per_token", 0)
        check(latent <= kv <= latent * 1.01, "kv_bytes_per_token is the bf16 latent formula plus paging",
              f"{kv} against {latent}")
        # Shares of one repetition's time (or one batch's steps): a share list summing past the
        # whole counted op times of more than one repetition.
        shares = [("prefill", j.get("prefill_op_share", {}))]
        shares += [(f"decode batch {b}", s) for b, s in j.get("decode_op_share", {}).items()]
        check(len(shares) == 1 + len(BATCHES), "--profile gives prefill's and every batch's op shares",
              repr([name for name, _ in shares]))
        for name, s in shares:
            total = sum(s.values())
            check(0.5 < total <= 1.0 + 1e-9 and "Linear" in s, f"{name}: op shares sum to at most the whole",
                  f"sum {total:.3f}: {s}")
        again = bench(d, model)
        if again is not None:
            check(again.get("machine") == machine and again.get("kernel_tier") == j.get("kernel_tier"),
                  "a second run reports the same machine and kernel tier", f"{again.get('machine')} / {machine}")
            check("prefill_op_share" not in again, "without --profile there are no op shares")
    finish()


if __name__ == "__main__":
    main()
