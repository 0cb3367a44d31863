#!/usr/bin/env bash
# Shared system prompts through a local cluster with prefix caching on, then off: K system
# prompts of N tokens, each request one of them plus a random suffix (`loadgen
# --shared-prefixes`), on `serve --workers W`; prints both loadgen lines and the ratio of output
# tokens/s (target >= 2x), with the share of prompt tokens served from cache.
#   scripts/bench-prefix-cache.sh [PRESET] [REQUESTS] [K] [N]   (defaults: small 256 8 1024)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
d="$root/build/bin/daedalus"
preset="${1:-small}" requests="${2:-256}" prompts="${3:-8}" length="${4:-1024}" workers=2
source "$root/scripts/lib/serve.sh"
serve_workdir
"$d" make-model --preset "$preset" --out "$tmp/model" >/dev/null

for mode in on off; do
  start_serve "$tmp" --model "$tmp/model" --workers "$workers" --listen 127.0.0.1:0 --prefix-caching "$mode"
  addr="$serve_addr"
  echo "== prefix caching $mode: $requests requests, $prompts system prompts of $length tokens, $preset, $workers workers"
  "$d" loadgen --server "$addr" --shared-prefixes "$prompts" --shared-prefix-len "$length" --prompt-len 32 \
    --max-new-tokens 32 --concurrency 16 --requests "$requests" --json | tee "$tmp/$mode.json"
  "$d" status --server "$addr" | sed -n '4,$p' | sed '/^$/q'
  stop_serve
done
python3 - "$tmp/on.json" "$tmp/off.json" <<'PY'
import json, sys
on, off = (json.loads(open(p).read().splitlines()[-1]) for p in sys.argv[1:3])
print(f"output tokens/s: on {on['output_tokens_per_s']:.1f}, off {off['output_tokens_per_s']:.1f}: "
      f"{on['output_tokens_per_s'] / off['output_tokens_per_s']:.2f}x (target >= 2x); "
      f"TTFT p50 {on['ttft_ms_p50']:.0f} vs {off['ttft_ms_p50']:.0f} ms; "
      f"{100 * on['cached_tokens'] / on['prompt_tokens']:.1f}% of prompt tokens from cache")
PY
