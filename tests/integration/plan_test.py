#!/usr/bin/python3
"""`daedalus plan` end to end: the three output formats, a sweep with its SVG plot, an
expert-load histogram, disaggregated prefill and decode (--phase pd), and bad input (clear
message, non-zero exit, never a crash).

Usage: /usr/bin/python3 tests/integration/plan_test.py --daedalus build/bin/daedalus

Runs against the presets under cluster-configs/. Standard library only.
"""

import argparse
import csv
import io
import json
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET

from harness import check, describe, expect_error, finish

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
V3 = os.path.join(ROOT, "cluster-configs", "models", "deepseek-v3")
CLUSTERS = os.path.join(ROOT, "cluster-configs", "clusters")
TIMEOUT_S = 120
CONTRACT_KEYS = ["kv_bytes_per_token", "kv_capacity_tokens_per_device", "memory_per_device_bytes",
                 "input_tokens_per_s_per_node", "output_tokens_per_s_per_node", "ttft_ms", "itl_ms", "imbalance"]

def plan(exe, *args):
    try:
        return subprocess.run([exe, "plan", *args], capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise SystemExit(f"FAIL: daedalus plan {' '.join(args)} ran past {TIMEOUT_S} s") from e


def cluster(name):
    return os.path.join(CLUSTERS, name + ".yaml")


def test_json(exe):
    # The example command.
    proc = plan(exe, "--model", V3, "--cluster", cluster("h800-18node"), "--phase", "decode", "--avg-context", "4989",
                "--batch-per-gpu", "128", "--redundant-experts", "32", "--format", "json")
    check(proc.returncode == 0, "json: decode plan succeeds", describe(proc))
    lines = proc.stdout.strip().splitlines()
    check(len(lines) == 1, "json: one object for one plan", proc.stdout[:300])
    j = json.loads(lines[0])
    for key in CONTRACT_KEYS:
        check(key in j, f"json: key {key}")
    check(j["kv_bytes_per_token"] == 70272, "json: V3 KV bytes per token 70,272", str(j["kv_bytes_per_token"]))
    check(j["input_tokens_per_s_per_node"] is None and j["output_tokens_per_s_per_node"] > 0,
          "json: a decode plan has output throughput, no input throughput")
    check(abs(j["output_tokens_per_s_per_node"] / 14800 - 1) < 0.10, "json: DeepSeek decode within 10% of 14.8k",
          str(j["output_tokens_per_s_per_node"]))
    check(j["memory_per_device_bytes"] <= j["device_memory_bytes"], "json: the plan fits the device")
    check(j["kv_capacity_tokens_per_device"] >= 128 * 4989, "json: KV capacity holds the batch")
    check(j["itl_ms"] > 0 and j["ttft_ms"] > 0 and j["imbalance"] >= 1, "json: latencies and imbalance")
    parts = j["memory_bytes"]
    total = sum(parts[k] for k in ("reserved", "attention_and_dense", "shared_experts", "routed_experts_own",
                                   "routed_experts_redundant", "activations", "communication_buffers",
                                   "kv_cache_pool"))
    check(abs(total - parts["device"]) <= 8, "json: the memory parts add up to the device", f"{total} vs {parts['device']}")

    # The published presets: each reproduces its figure; the config.json path works as --model.
    for name, metric, value in (("deepseek-decode-h800", "output_tokens_per_s_per_node", 14800),
                                ("deepseek-prefill-h800", "input_tokens_per_s_per_node", 73700),
                                ("sglang-h100-12node", "output_tokens_per_s_per_node", 22282)):
        proc = plan(exe, "--model", os.path.join(V3, "config.json"), "--cluster", cluster(name), "--format", "json")
        check(proc.returncode == 0, f"json: preset {name}", describe(proc))
        if proc.returncode != 0:
            continue
        j = json.loads(proc.stdout)
        check(j["published"]["metric"] == metric and j["published"]["value"] == value, f"json: {name} published figure")
        check(abs(j[metric] / value - 1) < 0.10, f"json: {name} within 10% of {value}", str(j[metric]))
        print(f"{name}: planned {j[metric]:.0f} {metric}, published {value}")


def test_csv_and_table(exe):
    proc = plan(exe, "--model", V3, "--cluster", cluster("deepseek-prefill-h800"), "--format", "csv")
    check(proc.returncode == 0, "csv: prefill plan succeeds", describe(proc))
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    check(len(rows) == 1, "csv: one row", proc.stdout[:300])
    if rows:
        row = rows[0]
        check(all(k in row for k in CONTRACT_KEYS), "csv: contract columns")
        check(float(row["input_tokens_per_s_per_node"]) > 0 and row["output_tokens_per_s_per_node"] == "",
              "csv: a prefill plan has input throughput only")
        check(row["phase"] == "prefill" and row["ep"] == "32", "csv: the preset's settings")
    proc = plan(exe, "--model", V3, "--cluster", cluster("deepseek-decode-h800"))
    check(proc.returncode == 0, "table: decode plan succeeds", describe(proc))
    for part in ("memory per device", "attention and dense weights", "routed experts (redundant)", "KV cache",
                 "core attention", "routed experts", "dispatch + combine", "load imbalance", "output tokens/s",
                 "published output_tokens_per_s_per_node", "efficiency factors"):
        check(part in proc.stdout, f"table: shows {part!r}")


def test_sweep_and_plot(exe, tmp):
    svg_path = os.path.join(tmp, "sweep.svg")
    args = ["--model", V3, "--cluster", cluster("h800-18node"), "--phase", "decode", "--avg-context", "4989",
            "--sweep", "ep=8,16,32,64,144", "--sweep", "batch-per-gpu=16,32,64,128,256"]
    proc = plan(exe, *args, "--plot", svg_path)
    check(proc.returncode == 0, "sweep: succeeds though some points do not fit", describe(proc))
    check("does not fit" in proc.stdout and "does not divide" in proc.stdout,
          "sweep: failed points are reported inline", proc.stdout[:500])
    try:
        root = ET.parse(svg_path).getroot()
    except (ET.ParseError, OSError) as e:
        check(False, "sweep: --plot writes well-formed SVG", str(e))
        return
    check(root.tag == "{http://www.w3.org/2000/svg}svg", "sweep: the plot is an SVG document", root.tag)
    circles = root.findall(".//{http://www.w3.org/2000/svg}circle")
    proc = plan(exe, *args, "--format", "json")
    objects = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    check(len(objects) == 25, "sweep json: one object per plan", str(len(objects)))
    good = [o for o in objects if "error" not in o]
    check(0 < len(good) < 25, "sweep json: fitting and failing points", str(len(good)))
    check(len(circles) == len(good), "sweep: one point per fitting plan", f"{len(circles)} vs {len(good)}")
    check(root.find(".//{http://www.w3.org/2000/svg}polyline") is not None, "sweep: the frontier is drawn")
    # More sequences per device: more tokens per second, longer steps.
    by_batch = sorted((o["batch_per_gpu"], o) for o in good if o["ep"] == 144)
    check(all(a[1]["output_tokens_per_s_per_node"] < b[1]["output_tokens_per_s_per_node"] and
              a[1]["itl_ms"] < b[1]["itl_ms"] for a, b in zip(by_batch, by_batch[1:])),
          "sweep: throughput and latency rise with the batch")


def test_expert_load(exe, tmp):
    # A skewed histogram in `run --expert-load-out`'s format: hot experts need replicas.
    layers = [[] if l < 3 else [int(1e6 / (1 + (e * 37 + l) % 256)) for e in range(256)] for l in range(61)]
    path = os.path.join(tmp, "load.json")
    with open(path, "w") as f:
        json.dump({"n_routed_experts": 256, "layers": layers}, f)
    base = ["--model", V3, "--cluster", cluster("deepseek-prefill-h800"), "--format", "json", "--expert-load", path]
    with_replicas = plan(exe, *base)
    without = plan(exe, *base, "--redundant-experts", "0")
    check(with_replicas.returncode == 0 and without.returncode == 0, "expert-load: plans succeed",
          describe(with_replicas) + describe(without))
    if with_replicas.returncode == 0 and without.returncode == 0:
        a, b = json.loads(with_replicas.stdout), json.loads(without.stdout)
        check(a["imbalance"] < b["imbalance"] and b["imbalance"] > 1.1,
              "expert-load: redundant experts lower a skewed load's imbalance", f"{a['imbalance']} vs {b['imbalance']}")
        check(a["input_tokens_per_s_per_node"] > b["input_tokens_per_s_per_node"],
              "expert-load: ... and raise throughput")
    with open(path, "w") as f:
        json.dump({"n_routed_experts": 256, "layers": layers[:10]}, f)
    expect_error(plan(exe, *base), "expert-load with the wrong layer count", ["load.json", "expected 61 layers"])


def test_disaggregated(exe, tmp):
    # The preset's own settings (phase pd in its deployment block), then the same from flags on
    # a plain cluster: one JSON object with both sides, and the report.
    proc = plan(exe, "--model", V3, "--cluster", cluster("sglang-h100-pd"), "--format", "json")
    check(proc.returncode == 0, "pd: the preset plans", describe(proc))
    j = json.loads(proc.stdout.strip().splitlines()[0])
    check(j["phase"] == "pd" and j["prefill"]["devices"] == 24 and j["decode"]["devices"] == 72,
          "pd: 3 prefill nodes (EP24) and 9 decode nodes (EP72)", proc.stdout[:300])
    least = min(j["prefill_requests_per_s"], j["decode_requests_per_s"], j["kv_transfer_requests_per_s"])
    check(abs(j["requests_per_s"] - least) <= 1e-9 * least, "pd: serves the least of the three rates")
    check(abs(j["output_tokens_per_s"] - j["requests_per_s"] * 553) < 1e-6 * j["output_tokens_per_s"],
          "pd: output tokens/s = requests/s x output length")
    check(j["kv_bytes_per_request"] == 2000 * 70272, "pd: a request's KV pages are its prompt's latent rows",
          str(j["kv_bytes_per_request"]))
    check(j["bottleneck"] in ("prefill", "decode", "kv transfer"), "pd: names its bottleneck", j["bottleneck"])
    # DeepSeek's own units, 4 prefill and 18 decode nodes, under their daily mix: the pair and the
    # ratio that balances it, which must be of the order of theirs (4 : 18).
    proc = plan(exe, "--model", V3, "--cluster", cluster("deepseek-pd-h800"), "--format", "json")
    j = json.loads(proc.stdout.strip().splitlines()[0]) if proc.returncode == 0 else {}
    check(j.get("prefill_nodes") == 4 and j.get("decode_nodes") == 18 and 4.5 <= j.get("balanced_decode_nodes", 0) <= 72,
          "pd: DeepSeek's 4 + 18 node units plan, balanced by a decode share of the order of theirs", describe(proc))
    common = ["--model", V3, "--cluster", cluster("h800-18node"), "--phase", "pd", "--prefill-nodes", "4",
              "--prompt-len", "4096", "--avg-context", "4989", "--output-len", "1000", "--batch-per-gpu", "128",
              "--redundant-experts", "32"]
    flags = common + ["--decode-nodes", "14"]
    proc = plan(exe, *flags)
    check(proc.returncode == 0 and "disaggregated prefill and decode" in proc.stdout and "-bound" in proc.stdout,
          "pd: the report from flags", describe(proc))
    proc = plan(exe, *flags, "--sweep", "decode-nodes=4,14", "--sweep", "output-len=100,1000")
    rows = proc.stdout.strip().splitlines()
    check(proc.returncode == 0 and len(rows) == 5, "pd: a sweep over decode nodes and output length, a row each",
          describe(proc))
    svg_path = os.path.join(tmp, "pd.svg")
    proc = plan(exe, *flags, "--sweep", "decode-nodes=8,11,14", "--plot", svg_path)
    circles = ET.parse(svg_path).findall(".//{http://www.w3.org/2000/svg}circle") if proc.returncode == 0 else []
    check(len(circles) == 3, "pd: --plot draws each split of the sweep", f"{len(circles)} points; {describe(proc)}")
    expect_error(plan(exe, *common, "--decode-nodes", "15"), "pd: more nodes than the cluster",
                 ["4 prefill + 15 decode nodes", "has 18"])
    expect_error(plan(exe, "--model", V3, "--cluster", cluster("h800-18node"), "--phase", "pd", "--prefill-nodes", "4",
                      "--decode-nodes", "14"), "pd without an output length", ["--output-len"])
    expect_error(plan(exe, *flags, "--format", "csv"), "pd as CSV", ["--phase pd", "csv"])


def test_errors(exe, tmp):
    bad_cluster = os.path.join(tmp, "bad.yaml")
    with open(bad_cluster, "w") as f:
        f.write("name: bad\nnodes: 2\ndevices_per_node: 8\nhardware: h900\n")
    v3 = ["--model", V3]
    expect_error(plan(exe, *v3, "--cluster", bad_cluster), "unknown hardware", ["bad.yaml", "unknown hardware \"h900\""])
    expect_error(plan(exe, *v3, "--cluster", cluster("h800-18node"), "--ep", "7"), "EP that does not divide",
                 ["EP 7 does not divide the 144 devices"])
    expect_error(plan(exe, *v3, "--cluster", cluster("deepseek-decode-h800"), "--batch-per-gpu", "4096"),
                 "a batch that does not fit", ["does not fit", "4096 sequences", "sequences fit per device"])
    expect_error(plan(exe, *v3, "--cluster", cluster("h800-18node"), "--nodes", "1"), "weights that do not fit",
                 ["does not fit", "H800"])
    expect_error(plan(exe, *v3, "--cluster", cluster("h800-18node"), "--phase", "generate"), "unknown phase",
                 ["phase", "generate"])
    expect_error(plan(exe, *v3, "--cluster", cluster("h800-18node"), "--kv-dtype", "int4"), "unknown dtype",
                 ["kv-dtype=int4", "bf16 or fp8"])
    expect_error(plan(exe, *v3, "--cluster", cluster("h800-18node"), "--format", "xml"), "unknown format", ["xml"])
    expect_error(plan(exe, *v3, "--cluster", cluster("h800-18node"), "--sweep", "tp=2,4"), "unknown sweep setting",
                 ["unknown setting \"tp\""])
    expect_error(plan(exe, *v3, "--cluster", cluster("h800-18node"), "--sweep", "ep=7,11"), "a sweep where nothing fits",
                 ["does not divide"])
    expect_error(plan(exe, "--model", os.path.join(tmp, "no-model"), "--cluster", cluster("h800-18node")),
                 "missing model", ["no-model", "cannot open"])
    expect_error(plan(exe, *v3, "--cluster", os.path.join(tmp, "none.yaml")), "missing cluster", ["none.yaml"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daedalus", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        test_json(args.daedalus)
        test_csv_and_table(args.daedalus)
        test_sweep_and_plot(args.daedalus, tmp)
        test_expert_load(args.daedalus, tmp)
        test_disaggregated(args.daedalus, tmp)
        test_errors(args.daedalus, tmp)
    finish()


if __name__ == "__main__":
    main()
