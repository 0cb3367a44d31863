"""The figures of scripts/bench-elastic.sh from loadgen's --trace (one JSON line per request,
with each token's arrival time in seconds since the epoch) and from samples of `status --json`
(the workers' step times over their last heartbeat interval).
  elastic_report.py sample TIME < STATUS_JSON          one sample line: generation, workers' step times
  elastic_report.py prompts TRACE                      the completed requests as `run --prompts` lines
  elastic_report.py report TRACE SAMPLES RUN START KILLED"""
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


def sample(at):
    s = json.load(sys.stdin)
    print(json.dumps({"t": at, "generation": int(s.get("generation", 0)), "workers": [
        {"pid": int(w["pid"]), "median": w.get("step_ms_median", 0), "max": w.get("step_ms_max", 0)}
        for w in s.get("workers", [])]}))


def steps(samples, a, b):
    """(median, max) step milliseconds the workers reported in the samples taken in [a, b)."""
    out = [(w["median"], w["max"]) for s in samples if a <= s["t"] < b for w in s["workers"] if w["max"] > 0]
    return out


def prompts(trace_path):
    for r in load(trace_path):
        if r["status"] == "OK":
            print(json.dumps({k: r[k] for k in ("id", "prompt_ids", "max_new_tokens", "ignore_eos")}))


def report(trace_path, samples_path, run_path, start, killed):
    trace = load(trace_path)
    samples = load(samples_path)
    # The join: the first sample after the kill with 3 workers again, in a later generation.
    after_kill = [s for s in samples if s["t"] > killed]
    shrunk = next((s for s in after_kill if len(s["workers"]) == 2), None)
    grown = next((s for s in after_kill if shrunk and s["t"] > shrunk["t"] and len(s["workers"]) == 3), None)
    joined = grown["t"] if grown else 0
    if shrunk:
        print(f"serving with 2 workers (generation {shrunk['generation']}) at the first sample, {shrunk['t'] - killed:.2f} s "
              f"after the kill")
    if grown:
        print(f"the relaunched worker serves (generation {grown['generation']}) {joined - start:.1f} s into the run")
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
    timeline = " ".join(f"{rate(trace, t, t + 2):.0f}" for t in [start + 2 * k for k in range(int((end - start) / 2))])
    print(f"output tokens/s per 2 s from the start: {timeline}")
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
        # Step times as the workers report them (median and longest over each heartbeat
        # interval). The survivors switch to the grown world at an agreed step boundary; then
        # experts move onto the joiner, read in the background, and every rank switches at an
        # agreed step.
        steady = steps(samples, warm, killed)
        moving = steps(samples, joined, min(joined + 15, end))
        if steady and moving:
            median = statistics.median(m for m, _ in steady)
            calm = max(x for _, x in steady)
            worst = max(x for _, x in moving)
            print(f"steps before the kill: median {median:.1f} ms, longest {calm:.1f} ms ({calm / median:.1f}x; prefill "
                  f"chunks join decode steps)")
            print(f"longest step in the 15 s after the join, experts moving onto it: {worst:.1f} ms = {worst / median:.1f}x "
                  f"the median before the kill (target <= 2x), {worst / calm:.2f}x the longest before it")
    else:
        print("the relaunched worker did not join before the end")
    ran = {r["id"]: r["generated_ids"] for r in load(run_path)}
    same = sum(1 for r in ok if ran.get(r["id"]) == r["generated_ids"])
    print(f"greedy outputs equal to `run` on the same prompts: {same} of {len(ok)}")


if __name__ == "__main__":
    if sys.argv[1] == "sample":
        sample(float(sys.argv[2]))
    elif sys.argv[1] == "prompts":
        prompts(sys.argv[2])
    else:
        report(sys.argv[2], sys.argv[3], sys.argv[4], *(float(x) for x in sys.argv[5:7]))
