#!/usr/bin/python3
"""Bad checkpoints and bad run arguments give a clear error and a non-zero exit, never a crash.

Usage: /usr/bin/python3 tests/integration/cli_errors_test.py --daedalus build/bin/daedalus

Makes a tiny checkpoint (single file and sharded), corrupts copies of it, and runs
`daedalus run` against them and with bad arguments. Every failure must be an ordinary exit
(return code > 0, not a signal) with a `daedalus: error:` message naming the file, tensor or
token at fault. A --prompts file with some bad lines still answers the good ones, in order.
Standard library only.
"""

import argparse
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time

from harness import check, describe, expect_error, finish

TIMEOUT_S = 60
VOCAB = 512  # the tiny preset's vocabulary

class Cli:
    def __init__(self, exe, workdir):
        self.exe = exe
        self.workdir = workdir
        self.env = dict(os.environ)
        self.env.setdefault("OMP_NUM_THREADS", "2")

    def __call__(self, *args):
        try:
            return subprocess.run([self.exe, *args], cwd=self.workdir, env=self.env, capture_output=True,
                                  text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise SystemExit(f"FAIL: daedalus {' '.join(args)} ran past {TIMEOUT_S} s") from e


def expect_ok(proc, what):
    check(proc.returncode == 0, f"{what}: succeeds", describe(proc))


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_json(path, edit):
    with open(path) as f:
        j = json.load(f)
    edit(j)
    with open(path, "w") as f:
        json.dump(j, f, indent=2)


def truncate_half(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def shards(model):
    return sorted(n for n in os.listdir(model) if n.startswith("model-") and n.endswith(".safetensors"))


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daedalus", required=True)
    args = parser.parse_args()
    exe = os.path.abspath(args.daedalus)
    if not os.access(exe, os.X_OK):
        raise SystemExit(f"FAIL: {exe} is not an executable")
    start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="daedalus_cli_errors_")
    try:
        run_checks(Cli(exe, tmp), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cli_errors_test: {time.monotonic() - start:.1f} s")
    finish()


def check_cpu_tiers(cli, model):
    """DAEDALUS_CPU_ISA: an unknown name, or a tier this CPU lacks, is a clear error naming the
    tier and the missing feature; every tier it has runs (run --verbose names it)."""
    def with_isa(isa, *args):
        env = dict(cli.env, DAEDALUS_CPU_ISA=isa)
        return subprocess.run([cli.exe, *args], cwd=cli.workdir, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    run_args = ("run", "--model", model, "--prompt-ids", "1,2,3", "--max-new-tokens", "2", "--verbose")
    expect_error(with_isa("avx9000", *run_args), "DAEDALUS_CPU_ISA=avx9000", ["avx9000", "unknown tier"])
    flags = open("/proc/cpuinfo").read().split("\nflags")[1].split("\n")[0].split()
    needs = {"avx2": "avx2", "avx512": "avx512f", "avx512bf16": "avx512_bf16", "amx": "amx_bf16"}
    for isa, flag in needs.items():
        proc = with_isa(isa, *run_args)
        if isa == "amx" and flag in flags and proc.returncode != 0:
            # cpuinfo lists AMX, but the kernel may still refuse the tile permission
            # (arch_prctl): then it must be the same clean error.
            expect_error(proc, "DAEDALUS_CPU_ISA=amx refused by the OS", ["amx"])
        elif flag in flags:
            expect_ok(proc, f"DAEDALUS_CPU_ISA={isa} on a CPU with {flag}")
            check(f"kernel tier: {isa}" in proc.stderr, f"run --verbose names tier {isa}", describe(proc))
        else:
            expect_error(proc, f"DAEDALUS_CPU_ISA={isa} on a CPU without {flag}", [isa, flag])


def check_huge_pages(cli, model):
    """The process restarts itself once with glibc's malloc asking for transparent huge pages
    (run --verbose says so), unless DAEDALUS_HUGE_PAGES=off, the user's GLIBC_TUNABLES chose or it was
    started through the loader; the user's other tunables are kept, and the tokens are the same either way."""
    def run_with(launcher=(), **env):
        proc = subprocess.run([*launcher, cli.exe, "run", "--model", model, "--prompt-ids", "1,2,3",
                               "--max-new-tokens", "4", "--temperature", "0", "--verbose"], cwd=cli.workdir,
                              env=dict(cli.env, **env), capture_output=True, text=True, timeout=TIMEOUT_S)
        expect_ok(proc, f"run {' '.join(launcher) + ' ' if launcher else ''}with {env or 'the default paging'}")
        return proc
    mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    default, off = run_with(), run_with(DAEDALUS_HUGE_PAGES="off")
    check("huge pages: off" in off.stderr, "DAEDALUS_HUGE_PAGES=off: run --verbose says huge pages are off", describe(off))
    check(default.stdout == off.stdout, "the same tokens with and without huge pages", f"{default.stdout!r} vs {off.stdout!r}")
    if "[never]" in mode:
        check("huge pages: off" in default.stderr, "THP off in the kernel: run --verbose says so", describe(default))
        return
    check("huge pages: on" in default.stderr, "by default run --verbose says huge pages are on", describe(default))
    kept = run_with(GLIBC_TUNABLES="glibc.malloc.trim_threshold=134217728")
    check("huge pages: on" in kept.stderr, "the user's other GLIBC_TUNABLES: huge pages still on", describe(kept))
    chosen = run_with(GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
    check("huge pages: off" in chosen.stderr, "GLIBC_TUNABLES=glibc.malloc.hugetlb=0 is the user's choice",
          describe(chosen))
    hugetlbfs = run_with(GLIBC_TUNABLES="glibc.malloc.hugetlb=2")
    check("huge pages: glibc.malloc.hugetlb=2 (malloc maps reserved hugetlbfs pages" in hugetlbfs.stderr,
          "GLIBC_TUNABLES=glibc.malloc.hugetlb=2: run --verbose says malloc maps hugetlbfs pages", describe(hugetlbfs))
    loader = "/lib64/ld-linux-x86-64.so.2"
    if os.path.exists(loader):  # started through the loader: no restart (it would run the loader alone)
        proc = run_with(launcher=(loader,))
        check("huge pages: off" in proc.stderr and proc.stdout == off.stdout,
              "started through ld.so: 4 KB pages, the same tokens", describe(proc))


def run_checks(cli, tmp):
    model = os.path.join(tmp, "model")
    sharded = os.path.join(tmp, "sharded")
    expect_ok(cli("make-model", "--preset", "tiny", "--seed", "7", "--out", model), "make-model tiny")
    expect_ok(cli("make-model", "--preset", "tiny", "--seed", "7", "--shard-mb", "1", "--out", sharded),
              "make-model tiny --shard-mb 1")
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        raise SystemExit("FAIL: make-model wrote no model.safetensors; cannot go on")
    check_cpu_tiers(cli, model)
    check_huge_pages(cli, model)
    check(os.path.exists(os.path.join(sharded, "model.safetensors.index.json")) and len(shards(sharded)) >= 2,
          "make-model --shard-mb 1 writes an index and several shards", str(os.listdir(sharded)))

    # The valid checkpoints run.
    for m in (model, sharded):
        p = cli("run", "--model", m, "--prompt-ids", "1,2,3", "--max-new-tokens", "2", "--temperature", "0")
        expect_ok(p, f"run on the valid {os.path.basename(m)} checkpoint")
        if p.returncode == 0:
            out = json.loads(p.stdout.strip().splitlines()[-1])
            check(len(out.get("generated_ids", [])) == 2, "run generates 2 tokens", p.stdout)

    # ---- Bad run arguments -------------------------------------------------------------------
    # Engine sizes out of range are refused by the flag parser, naming the flag (a page size of 0
    # had divided by zero; a pool of 2^54 tokens had overflowed its size in bytes).
    for flag, value in (("--page-size", "0"), ("--page-size", "-1"), ("--kv-cache-tokens", "0"),
                        ("--kv-cache-tokens", "20000000000000000"), ("--kv-cache-mib", "9000000000000"),
                        ("--max-batch-tokens", "0"), ("--prefill-chunk", "-5"), ("--threads", "-2")):
        p = cli("run", "--model", model, "--prompt-ids", "1,2,3", "--max-new-tokens", "1", flag, value)
        what = f"run {flag} {value}"
        check(p.returncode > 0, f"{what}: exits non-zero without a signal", describe(p))
        check(flag in p.stderr and "not in range" in p.stderr, f"{what}: the message names the flag and its range",
              describe(p))
    p = cli("run", "--model", model, "--prompt-ids", f"1,2,{VOCAB}", "--max-new-tokens", "1")
    expect_error(p, "token id == vocab_size", [str(VOCAB), "vocabulary", f"[0, {VOCAB})"])
    p = cli("run", "--model", model, "--prompt-ids", "3,100000", "--max-new-tokens", "1")
    expect_error(p, "token id far above vocab_size", ["100000", "vocabulary", str(VOCAB)])
    p = cli("run", "--model", model, "--prompt-ids", "-1", "--max-new-tokens", "1")
    expect_error(p, "negative token id", ["-1", "vocabulary"])
    p = cli("run", "--model", model, "--prompt-ids", "", "--max-new-tokens", "1")
    expect_error(p, "empty --prompt-ids", ["prompt"])
    p = cli("run", "--model", model, "--prompt-ids", ",", "--max-new-tokens", "1")
    expect_error(p, "--prompt-ids with no ids", ["prompt is empty"])
    p = cli("run", "--model", model, "--prompt-ids", "1,abc,3", "--max-new-tokens", "1")
    expect_error(p, "non-numeric token id", ["abc", "token id"])
    p = cli("run", "--model", model, "--prompt-ids", "1.5", "--max-new-tokens", "1")
    expect_error(p, "fractional token id", ["1.5", "token id"])
    p = cli("run", "--model", model, "--prompt-ids", "99999999999", "--max-new-tokens", "1")
    expect_error(p, "token id beyond int32", ["99999999999"])
    p = cli("run", "--model", model, "--prompt-ids", "1", "--kv-dtype", "int4")
    check(p.returncode > 0 and "int4" in p.stderr and "bf16,f32,fp8" in p.stderr,
          "--kv-dtype int4 is refused with the allowed list", describe(p))
    p = cli("run", "--model", model, "--prompt-ids", "1", "--max-new-tokens", "1", "--kv-cache-mib", "100000000")
    expect_error(p, "a KV cache larger than the memory available", ["100000000 MiB", "MiB of memory is available", "--kv-cache-mib"])
    p = cli("worker", "--coordinator", "127.0.0.1:9", "--model", model, "--kv-cache-mib", "100000000")
    check(p.returncode > 0 and "error: the KV cache pool needs 100000000 MiB" in p.stderr and "--kv-cache-mib" in p.stderr,
          "a worker whose KV cache cannot fit: refused with the sizes before it registers", describe(p))
    notjson = os.path.join(tmp, "bench.txt")
    with open(notjson, "w") as f:
        f.write("prefill 512 tokens: 1000 tok/s\n")
    p = cli("plan", "--calibrate", notjson, "--out", os.path.join(tmp, "hw.yaml"))
    expect_error(p, "plan --calibrate on text that is not JSON", [notjson, "not JSON"])
    p = cli("plan", "--calibrate", notjson)
    expect_error(p, "plan --calibrate without --out", ["--out"])
    missing = os.path.join(tmp, "no_such_model")
    p = cli("run", "--model", missing, "--prompt-ids", "1", "--max-new-tokens", "1")
    expect_error(p, "missing model directory", [missing])
    p = cli("run", "--model", model, "--prompts", os.path.join(tmp, "no_such.jsonl"))
    expect_error(p, "missing --prompts file", ["no_such.jsonl"])

    # ---- Bad checkpoints ---------------------------------------------------------------------
    bad = copy_model(model, os.path.join(tmp, "truncated_single"))
    truncate_half(os.path.join(bad, "model.safetensors"))
    p = cli("run", "--model", bad, "--prompt-ids", "1,2", "--max-new-tokens", "1")
    expect_error(p, "truncated model.safetensors", [os.path.join(bad, "model.safetensors"), "tensor ", "truncated"])

    bad = copy_model(sharded, os.path.join(tmp, "truncated_shard"))
    shard = shards(bad)[1]
    truncate_half(os.path.join(bad, shard))
    p = cli("run", "--model", bad, "--prompt-ids", "1,2", "--max-new-tokens", "1")
    expect_error(p, "truncated shard", [os.path.join(bad, shard), "tensor ", "truncated"])

    bad = copy_model(sharded, os.path.join(tmp, "missing_shard"))
    shard = shards(bad)[-1]
    os.remove(os.path.join(bad, shard))
    p = cli("run", "--model", bad, "--prompt-ids", "1,2", "--max-new-tokens", "1")
    expect_error(p, "index naming a missing shard", ["model.safetensors.index.json", shard, "does not exist"])

    bad = copy_model(model, os.path.join(tmp, "garbage_header"))
    path = os.path.join(bad, "model.safetensors")
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        f.write(b"#" * length)
    p = cli("run", "--model", bad, "--prompt-ids", "1,2", "--max-new-tokens", "1")
    expect_error(p, "garbage safetensors header", [path, "corrupt", "JSON"])

    bad = copy_model(model, os.path.join(tmp, "huge_header_length"))
    path = os.path.join(bad, "model.safetensors")
    with open(path, "r+b") as f:
        f.write(struct.pack("<Q", 1 << 40))
    p = cli("run", "--model", bad, "--prompt-ids", "1,2", "--max-new-tokens", "1")
    expect_error(p, "header length past the end of the file", [path, "header length"])

    bad = copy_model(model, os.path.join(tmp, "truncated_config"))
    path = os.path.join(bad, "config.json")
    truncate_half(path)
    p = cli("run", "--model", bad, "--prompt-ids", "1,2", "--max-new-tokens", "1")
    expect_error(p, "truncated config.json", [path, "JSON"])

    bad = copy_model(model, os.path.join(tmp, "llama_config"))
    path = os.path.join(bad, "config.json")
    edit_json(path, lambda j: j.update(model_type="llama"))
    p = cli("run", "--model", bad, "--prompt-ids", "1,2", "--max-new-tokens", "1")
    expect_error(p, "unsupported model_type", [path, "model_type", "llama"])

    bad = copy_model(model, os.path.join(tmp, "wide_config"))
    edit_json(os.path.join(bad, "config.json"), lambda j: j.update(hidden_size=256))
    p = cli("run", "--model", bad, "--prompt-ids", "1,2", "--max-new-tokens", "1")
    expect_error(p, "config hidden_size disagreeing with the weights",
                 [os.path.join(bad, "model.safetensors"), "model.embed_tokens.weight",
                  "expected shape [512, 256], found [512, 128]"])

    bad = copy_model(model, os.path.join(tmp, "deep_config"))
    edit_json(os.path.join(bad, "config.json"), lambda j: j.update(num_hidden_layers=1 << 50))
    p = cli("run", "--model", bad, "--prompt-ids", "1,2", "--max-new-tokens", "1")
    expect_error(p, "config with an absurd num_hidden_layers",
                 [os.path.join(bad, "config.json"), "num_hidden_layers", "larger than any model"])

    # ---- A --prompts file with some bad lines ------------------------------------------------
    good = {
        "a": {"id": "a", "prompt_ids": [1, 2, 3], "max_new_tokens": 3, "temperature": 0},
        "d": {"id": "d", "prompt_ids": [7, 8, 9, 10], "max_new_tokens": 2, "temperature": 0},
        "f": {"id": "f", "prompt_ids": [511], "max_new_tokens": 4, "temperature": 0},
    }
    lines = [
        json.dumps(good["a"]),
        '{"id": "b", "prompt_ids": [1, 2',  # malformed JSON
        json.dumps({"id": "c", "prompt_ids": [5, VOCAB + 88], "max_new_tokens": 2}),  # token >= vocab
        json.dumps(good["d"]),
        json.dumps({"id": "e", "prompt_ids": [4, "x"]}),  # non-integer id
        json.dumps(good["f"]),
    ]
    prompts = os.path.join(tmp, "prompts.jsonl")
    with open(prompts, "w") as f:
        f.write("\n".join(lines) + "\n")
    out_path = os.path.join(tmp, "results.jsonl")
    p = cli("run", "--model", model, "--prompts", prompts, "--output", out_path, "--ignore-eos")
    check(p.returncode > 0, "--prompts with bad lines: exits non-zero without a signal", describe(p))
    check("line 2" in p.stderr and "line 3" in p.stderr and "line 5" in p.stderr,
          "--prompts with bad lines: stderr names the bad lines", describe(p))
    check(str(VOCAB + 88) in p.stderr, "--prompts with bad lines: stderr names the bad token", describe(p))
    results = read_jsonl(out_path) if os.path.exists(out_path) else []
    check(len(results) == len(lines), "--prompts with bad lines: one result per input line",
          f"{len(results)} results for {len(lines)} lines: {results}")
    if len(results) == len(lines):
        # A line that does not parse as a request is named by its line number.
        expected_ids = [("a",), ("b", "2"), ("c",), ("d",), ("e", "5"), ("f",)]
        for n, (r, want_ids) in enumerate(zip(results, expected_ids), start=1):
            check(r.get("id") in want_ids, f"result {n} keeps input order (id {' or '.join(want_ids)})", str(r))
        for n in (2, 3, 5):
            r = results[n - 1]
            check("error" in r and "generated_ids" not in r, f"result {n} (bad line) is an error", str(r))
        check(str(VOCAB + 88) in results[2].get("error", ""), "the bad token's error names the token", str(results[2]))
        for n, key in ((1, "a"), (4, "d"), (6, "f")):
            r = results[n - 1]
            want = good[key]["max_new_tokens"]
            check("error" not in r and len(r.get("generated_ids", [])) == want and r.get("finish_reason") == "length",
                  f"result {n} (good line {key}) generates {want} tokens", str(r))
            check(all(0 <= t < VOCAB for t in r.get("generated_ids", [])), f"result {n}: ids inside the vocabulary",
                  str(r))

        # The good requests are unaffected by the bad lines: a file of only them gives the same.
        only_good = os.path.join(tmp, "good.jsonl")
        with open(only_good, "w") as f:
            f.write("".join(json.dumps(good[k]) + "\n" for k in ("a", "d", "f")))
        good_out = os.path.join(tmp, "good_results.jsonl")
        p = cli("run", "--model", model, "--prompts", only_good, "--output", good_out, "--ignore-eos")
        expect_ok(p, "--prompts with only the good lines")
        if p.returncode == 0:
            check(read_jsonl(good_out) == [results[0], results[3], results[5]],
                  "good lines give the same results with or without the bad lines",
                  f"{read_jsonl(good_out)} vs {[results[0], results[3], results[5]]}")


if __name__ == "__main__":
    main()
