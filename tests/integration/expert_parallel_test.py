"""Expert parallelism under real mpirun: 1-4 ranks give the single-process results, and a
stalled rank makes the others report it within the collective deadline instead of hanging."""
import argparse
import json
import os
import tempfile
import time
from harness import ENV, MPIRUN, check, finish, run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daedalus", required=True)
    d = parser.parse_args().daedalus
    with tempfile.TemporaryDirectory() as tmp:
        model, prompts = os.path.join(tmp, "tiny"), os.path.join(tmp, "prompts.jsonl")
        run([d, "make-model", "--preset", "tiny", "--dtype", "bf16", "--out", model])
        with open(prompts, "w") as f:
            for i in range(7):  # uneven lengths, more requests than ranks, one sampled
                req = {"id": f"r{i}", "prompt_ids": [(i * 37 + j * 11) % 512 for j in range(3 + 5 * i)],
                       "max_new_tokens": 4 + 2 * i}
                if i == 5:
                    req.update(temperature=0.9, top_p=0.95, seed=3)
                f.write(json.dumps(req) + "\n")
        single = os.path.join(tmp, "single.jsonl")
        p = run([d, "run", "--model", model, "--prompts", prompts, "--ignore-eos", "--output", single])
        check(p.returncode == 0, f"single-process run ({p.stderr.strip()[-200:]})")
        expected = open(single).read()
        for np_, redundant in [(1, 0), (2, 0), (3, 0), (4, 0), (3, 4), (4, 8)]:
            out = os.path.join(tmp, f"ep{np_}-{redundant}.jsonl")
            p = run(MPIRUN + ["-np", str(np_), d, "run", "--model", model, "--prompts", prompts, "--ignore-eos",
                              "--redundant-experts", str(redundant), "--output", out])
            same = p.returncode == 0 and os.path.exists(out) and open(out).read() == expected
            check(same, f"{np_} ranks, {redundant} redundant experts: same tokens as one process"
                        + ("" if same else f" (rc {p.returncode}: {p.stderr.strip()[-300:]})"))
        # Two "nodes" of 2 ranks: whole routing groups per node, same tokens.
        out = os.path.join(tmp, "nodes.jsonl")
        p = run(MPIRUN + ["-np", "4", d, "run", "--model", model, "--prompts", prompts, "--ignore-eos",
                          "--ranks-per-node", "2", "--redundant-experts", "2", "--output", out])
        check(p.returncode == 0 and open(out).read() == expected,
              "4 ranks as 2 nodes of 2 (node-level placement): same tokens as one process")
        # Expert load: counted where tokens are routed, summed over ranks: the same at 1 and 3 ranks.
        # Placing by it (with replicas) lowers the imbalance and changes no token.
        load1, load3 = os.path.join(tmp, "load1.json"), os.path.join(tmp, "load3.json")
        run([d, "run", "--model", model, "--prompts", prompts, "--ignore-eos", "--output", os.devnull,
             "--expert-load-out", load1])
        p = run(MPIRUN + ["-np", "3", d, "run", "--model", model, "--prompts", prompts, "--ignore-eos", "--output",
                          os.devnull, "--expert-load-out", load3])
        uniform = float(p.stderr.split("over MoE layers: ")[1].split()[0]) if "over MoE layers: " in p.stderr else None
        check(os.path.exists(load3) and json.load(open(load1)) == json.load(open(load3))
              and sum(map(sum, json.load(open(load1))["layers"])) > 0, "expert load equal at 1 and 3 ranks")
        placed = os.path.join(tmp, "placed.jsonl")
        p = run(MPIRUN + ["-np", "3", d, "run", "--model", model, "--prompts", prompts, "--ignore-eos",
                          "--placement-from", load1, "--redundant-experts", "4", "--output", placed])
        balanced = float(p.stderr.split("over MoE layers: ")[1].split()[0]) if "over MoE layers: " in p.stderr else None
        check(p.returncode == 0 and open(placed).read() == expected and uniform and balanced and balanced < uniform,
              f"--placement-from with 4 replicas: imbalance {uniform} -> {balanced}, same tokens")
        # Logits: every row's sums in the same order wherever its experts run, so bitwise equal at
        # any rank count and placement.
        ids = "5,77,300,12,9,41,3,8,99,100,200,7,13"
        one = os.path.join(tmp, "l1.json")
        run([d, "run", "--model", model, "--prompt-ids", ids, "--max-new-tokens", "5", "--ignore-eos",
             "--dump-logits", one])
        a = json.load(open(one))
        for np_, extra, label in [(2, [], "2 ranks"), (3, ["--redundant-experts", "3"], "3 ranks, 3 redundant experts"),
                                  (4, ["--redundant-experts", "8"], "4 ranks, 8 redundant experts"),
                                  (3, ["--placement-from", load1, "--redundant-experts", "4"],
                                   "3 ranks placed by measured load, 4 replicas")]:
            path = os.path.join(tmp, f"l{np_}.json")
            p = run(MPIRUN + ["-np", str(np_), d, "run", "--model", model, "--prompt-ids", ids, "--max-new-tokens", "5",
                              "--ignore-eos", "--dump-logits", path] + extra)
            b = json.load(open(path)) if p.returncode == 0 and os.path.exists(path) else {"logits": [], "generated_ids": []}
            diff = max((abs(x - y) for ra, rb in zip(a["logits"], b["logits"]) for x, y in zip(ra, rb)), default=None)
            check(a["generated_ids"] == b["generated_ids"] and a["logits"] == b["logits"],
                  f"--dump-logits under {label}: bitwise equal to one process (max |diff| {diff})")
        # Float weights go through BLAS, one row a call: replicas split an expert's rows over
        # ranks, which must not change a row's bits either.
        f32 = os.path.join(tmp, "tiny-f32")
        run([d, "make-model", "--preset", "tiny", "--dtype", "f32", "--out", f32])
        one32, four32 = os.path.join(tmp, "f32-1.json"), os.path.join(tmp, "f32-4.json")
        run([d, "run", "--model", f32, "--prompt-ids", ids, "--max-new-tokens", "5", "--ignore-eos", "--dump-logits",
             one32])
        p = run(MPIRUN + ["-np", "4", d, "run", "--model", f32, "--prompt-ids", ids, "--max-new-tokens", "5",
                          "--ignore-eos", "--redundant-experts", "8", "--dump-logits", four32])
        a32 = json.load(open(one32))
        b32 = json.load(open(four32)) if p.returncode == 0 and os.path.exists(four32) else {"logits": []}
        check(a32["logits"] == b32["logits"], "f32 checkpoint, 4 ranks, 8 redundant experts: logits bitwise equal")
        # bench-a2a: the keys `plan --calibrate` reads, and dispatch sending a token's activations
        # once per rank (top-4 of 16 over 2 ranks: many tokens have several experts on one rank),
        # where combine returns one row per (token, expert).
        p = run(MPIRUN + ["-np", "2", d, "bench-a2a", "--hidden", "64", "--tokens", "1,32", "--topk", "4",
                          "--experts", "16", "--json"])
        rows = json.loads(p.stdout)["results"] if p.returncode == 0 else []
        by = {(r["tokens"], r["phase"]): r for r in rows}
        keys = {"tokens", "phase", "bytes_per_rank", "ours_us", "ours_gb_s", "raw_us", "raw_gb_s",
                "slot_row_bytes_per_rank"}
        d32, c32 = by.get((32, "dispatch"), {}), by.get((32, "combine"), {})
        check(len(rows) == 4 and all(keys <= set(r) for r in rows)
              and 0 < d32["bytes_per_rank"] < d32["slot_row_bytes_per_rank"] == c32["bytes_per_rank"]
              and c32["slot_row_bytes_per_rank"] == c32["bytes_per_rank"],
              f"bench-a2a: dispatch moves {d32.get('bytes_per_rank')} of {d32.get('slot_row_bytes_per_rank')} "
              f"bytes a row per slot would (rc {p.returncode}{': ' + p.stderr.strip()[-200:] if p.returncode else ''})")
        # A rank that stalls: rank 2 sleeps 60 s at its 6th collective; the deadline is 2 s.
        start = time.monotonic()
        p = run(MPIRUN + ["-np", "3", d, "run", "--model", model, "--prompts", prompts, "--ignore-eos",
                          "--collective-timeout", "2", "--output", os.path.join(tmp, "stall.jsonl")],
                timeout=120, env=dict(ENV, DAEDALUS_FAULT_STALL="2:5:60000"))
        elapsed = time.monotonic() - start
        check(p.returncode != 0 and "waiting for rank 2" in p.stderr and "timed out after 2000 ms" in p.stderr
              and elapsed < 30,
              f"stalled rank reported in {elapsed:.1f} s: "
              + next((line for line in p.stderr.splitlines() if "timed out" in line), "(no diagnostic)"))
    finish()


if __name__ == "__main__":
    main()
