"""cluster-configs/models/{tiny,small,bench}/config.json are exactly what make-model writes."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daedalus", required=True)
    args = parser.parse_args()
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in ("tiny", "small", "bench"):
            out = os.path.join(tmp, preset)
            subprocess.run([args.daedalus, "make-model", "--preset", preset, "--config-only", "--out", out],
                           check=True, capture_output=True, timeout=60)
            if sorted(os.listdir(out)) != ["config.json", "tokenizer.json", "tokenizer_config.json"]:
                failures.append(f"{preset}: --config-only wrote {os.listdir(out)}")
            made = json.load(open(os.path.join(out, "config.json")))
            kept = json.load(open(os.path.join(ROOT, "cluster-configs", "models", preset, "config.json")))
            if made != kept:
                failures.append(f"{preset}: cluster-configs/models/{preset}/config.json differs from make-model's")
            if made["model_type"] != "deepseek_v3" or made["topk_method"] != "noaux_tc":
                failures.append(f"{preset}: not a DeepSeek-V3 config")
    for f in failures:
        print("FAIL", f)
    print(f"{3 - len(failures)} of 3 presets match")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
