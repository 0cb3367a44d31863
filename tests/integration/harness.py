"""What the integration tests share: their one argument (--daedalus), a generated model, named
checks that collect failures, bounded subprocess runs, JSON lines, free loopback ports, polling
with a deadline, and the tails of logs on failure. Each test imports it from its own folder (the script's folder is on sys.path)."""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

# One OpenMP thread per process: the tests start many processes on a 2-core machine.
ENV = dict(os.environ, OMP_NUM_THREADS="1")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]
failures = []
passed = 0


def daedalus():
    """The daedalus executable every integration test is given (--daedalus)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--daedalus", required=True)
    return parser.parse_args().daedalus


def make_model(d, folder, preset="tiny"):
    """Generates the preset's checkpoint into folder/PRESET and returns its path."""
    path = os.path.join(folder, preset)
    subprocess.run([d, "make-model", "--preset", preset, "--out", path], check=True, capture_output=True, timeout=300, env=ENV)
    return path


def check(ok, what, detail=""):
    """Prints "ok   what" or "FAIL what (detail)"; a failure is remembered for finish()."""
    global passed
    print(("ok   " if ok else "FAIL ") + what + ("" if ok or not detail else f" ({detail})"), flush=True)
    if ok:
        passed += 1
    else:
        failures.append(what)
    return ok


def measured(what, seconds, bound):
    """A timing printed as measured, and checked against its bound."""
    print(f"measured: {what}: {seconds:.2f} s (bound {bound} s)", flush=True)
    return check(seconds <= bound, f"{what} within {bound} s", f"{seconds:.2f} s")


def run(cmd, timeout=120, env=None):
    """Runs cmd to completion (text output captured), within `timeout` seconds."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV if env is None else env)


def describe(proc):
    """A finished process in one line: exit status, standard error, the start of standard output."""
    return f"rc={proc.returncode} stderr={proc.stderr.strip()[:600]!r} stdout={proc.stdout.strip()[:300]!r}"


def json_output(proc, what):
    """A finished process's standard output as one JSON object, checked: `what` exits 0 and
    prints one object. None where either fails."""
    if not check(proc.returncode == 0, f"{what}: exits 0", describe(proc)):
        return None
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        check(False, f"{what}: prints one JSON object", f"{e}: {proc.stdout[:300]!r}")
        return None


def expect_error(proc, what, parts):
    """A clean failure: exit status > 0 (a signal gives < 0), a 'daedalus: error:' message that
    names every part, and no sign of a crash."""
    check(proc.returncode > 0, f"{what}: exits non-zero without a signal", describe(proc))
    check("daedalus: error:" in proc.stderr, f"{what}: prints a 'daedalus: error:' message", describe(proc))
    for bad in ("terminate called", "Aborted", "Segmentation", "Sanitizer", "runtime error", "check failed"):
        check(bad not in proc.stderr, f"{what}: does not crash ({bad})", describe(proc))
    for part in parts:
        check(part in proc.stderr, f"{what}: message names {part!r}", describe(proc))


def lines(text):
    """The JSON objects among the lines of `text`."""
    return [json.loads(l) for l in text.splitlines() if l.strip().startswith("{")]


def check_answers(proc, what, reference):
    """`generate --json` run as `proc` ended with every request of `reference` (id -> (generated
    ids, logprobs), as `run` gave them) answered, none failed, and each equal to it exactly."""
    out, err = proc.communicate(timeout=300)
    got = {r["id"]: r for r in lines(out)}
    errors = [r for r in got.values() if "error" in r]
    n = len(reference)
    check(proc.returncode == 0 and not errors and len(got) == n, f"{what}: every request succeeds",
          f"rc={proc.returncode} {len(got)} answers, errors: {errors[:2]} {err[-300:]}")
    same = [i for i, r in got.items() if (r.get("generated_ids"), r.get("logprobs")) == reference.get(i)]
    check(len(same) == n, f"{what}: tokens and log-probabilities equal `run` exactly, greedy and sampled",
          f"{len(same)} of {n} equal; first other: "
          f"{next(((i, r.get('generated_ids'), reference.get(i, [None])[0]) for i, r in got.items() if i not in same), None)}")


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, seconds, step=0.3):
    """predicate()'s first truthy value within `seconds`, else its value at the deadline."""
    until = time.time() + seconds
    while time.time() < until:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def stop(proc, timeout=30):
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; its exit status."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def stop_cluster(coordinator, workers):
    """Kills the worker processes (each leads its own session) still running, then stops the
    coordinator."""
    for w in workers:
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGKILL)
            w.wait()
    if coordinator.poll() is None:
        coordinator.send_signal(signal.SIGTERM)
        coordinator.wait(timeout=30)


def dump_logs(folder, names, chars=4000):
    """Prints the tail of each named log in `folder` that exists (after a failure)."""
    for name in names:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                print(f"--- {name} (tail)\n" + f.read()[-chars:], flush=True)


def finish():
    """Prints the count of checks passed and failed (naming the failed) and exits 1 if any failed."""
    print(f"{passed} check(s) passed, {len(failures)} failed" + "".join(f"\n  FAIL {f}" for f in failures), flush=True)
    sys.exit(1 if failures else 0)
