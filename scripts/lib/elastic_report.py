"""The figures of scripts/bench-elastic.sh from loadgen's --trace (one JSON line per request,
with each token's arrival time in seconds since the epoch).
  elastic_report.py prompts TRACE                      the completed requests as `run --prompts` lines
  elastic_report.py report TRACE RUN START KILLED JOINED"""
import json
import statistics
import sys


def load(path):
    return [json.loads(l) for l in open(path) if l.strip()]


def rate(trace, a, b):
    """Output tokens/s that arrived in [a, b)."""
    if b <= a:
        return 0.0
    return sum(1 for r in trace for t in r["token_times"] if a <= t < b) / (b - a)


def gaps(trace, a, b):
    """(gap, when it ended) for the inter-token gaps of every stream whose later token arrived in [a, b)."""
    out = []
    for r in trace:
        ts = r["token_times"]
        out += [(y - x, y) for x, y in zip(ts, ts[1:]) if a <= y < b]
    return out


def prompts(trace_path):
    for r in load(trace_path):
        if r["status"] == "OK":
            print(json.dumps({k: r[k] for k in ("id", "prompt_ids", "max_new_tokens", "ignore_eos")}))


def report(trace_path, run_path, start, killed, joined):
    trace = load(trace_path)
    ok = [r for r in trace if r["status"] == "OK"]
    failed = [r for r in trace if r["status"] != "OK"]
    end = max(t for r in trace for t in r["token_times"])
    print(f"requests: {len(trace)} sent, {len(ok)} completed, {len(failed)} failed (target 0)"
          + "".join(f"\n  {r['id']}: {r['status']} {r['error']}" for r in failed[:5]))
    after = [t for r in trace for t in r["token_times"] if t > killed]
    print(f"kill to the first token served after it: {min(after) - killed:.3f} s" if after else "no token after the kill")
    # The longest any stream waited across the kill: its last token before, its first after.
    across = []
    for r in trace:
        ts = r["token_times"]
        before = [t for t in ts if t <= killed]
        later = [t for t in ts if t > killed]
        if before and later:
            across.append(later[0] - before[-1])
    if across:
        print(f"longest wait of a stream across the kill: {max(across):.3f} s ({len(across)} streams were running)")
    warm = start + 2.0
    before = rate(trace, warm, killed)
    two = rate(trace, killed + 1.0, joined if joined else end)
    print(f"output tokens/s: {before:.1f} before the kill (from 2 s), {two:.1f} with 2 workers "
          f"({100 * two / before:.0f}%, target >= 60%)")
    if joined:
        back = None
        for s in range(0, 16):  # the first 5 s window after the join at >= 90%
            w = rate(trace, joined + s, joined + s + 5)
            if joined + s + 5 > end:
                break
            if w >= 0.9 * before:
                back = (s + 5, w)
                break
        tail = rate(trace, joined + 5, end)
        print(f"after the join: {tail:.1f} tokens/s from 5 s after it to the end ({100 * tail / before:.0f}%)"
              + (f"; >= 90% of before within {back[0]} s of the join ({back[1]:.1f} tokens/s)" if back
                 else "; not back to 90% within 15 s of the join (target)"))
        # Inter-token gaps stand for step times. The join itself cuts one step short on every
        # rank (it is computed again in the new world); then experts move onto the joiner, read
        # in the background, and the switch comes at an agreed step.
        steady = gaps(trace, warm, killed)
        if steady:
            median = statistics.median(g for g, _ in steady)
            calm, _ = max(steady)
            print(f"largest inter-token gap before the kill (steady state: prefills join decode steps): {1000 * calm:.1f} ms = "
                  f"{calm / median:.1f}x the median ({1000 * median:.1f} ms)")
            for what, a, b, target in (("at the join (its first 2 s)", joined - 1, joined + 2, ""),
                                       ("while experts move onto it (2-15 s after)", joined + 2, joined + 15, "; target <= 2x")):
                window = gaps(trace, a, min(b, end))
                if window:
                    worst, at = max(window)
                    print(f"largest inter-token gap {what}: {1000 * worst:.1f} ms, ending {at - joined:+.1f} s from it = "
                          f"{worst / median:.1f}x the median before the kill ({1000 * median:.1f} ms{target})")
    else:
        print("the relaunched worker did not join before the end")
    ran = {r["id"]: r["generated_ids"] for r in load(run_path)}
    same = sum(1 for r in ok if ran.get(r["id"]) == r["generated_ids"])
    print(f"greedy outputs equal to `run` on the same prompts: {same} of {len(ok)}")


if __name__ == "__main__":
    if sys.argv[1] == "prompts":
        prompts(sys.argv[2])
    else:
        report(sys.argv[2], sys.argv[3], *(float(x) for x in sys.argv[4:7]))
