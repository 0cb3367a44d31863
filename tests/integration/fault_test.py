"""Faults with real processes (a coordinator and 2 workers under mpirun, tiny preset), each
with a stated bound on how soon it is detected, and what the clients see:

- a slow rank (one 1.5 s stall mid-step, below --stall-timeout): requests still get the
  single-process tokens; nothing is lost;
- a dropped control stream (a worker's connection cut, the process alive): the open stream ends
  UNAVAILABLE within 2 s, and the same worker processes re-form the cluster within 15 s;
- the coordinator killed and restarted while the workers run: clients get UNAVAILABLE during
  the gap, the workers register with the new coordinator within 15 s, and requests succeed;
- a worker that heartbeats but never finishes a step (stalled 10 s in a collective): its open
  stream ends UNAVAILABLE within --stall-timeout (3 s) + 1.5 s naming the stall, and when the
  stall ends the workers re-form by themselves;
- the coordinator restarted under workers with a ucx data plane: they register again with the
  same ranks over the endpoints they already have, within 15 s.

The measured times are printed ("measured: ..."), for the README's figures."""
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import harness
from harness import MPIRUN, check, daedalus, dump_logs, failures, finish, free_port, lines, make_model, measured, run

# The generic CPU tier for every process that computes (workers and the single-process `run`
# alike, so tokens still compare exactly): its plain loops keep a 4,000-token stream alive long
# enough for a fault to land in it on a fast machine.
ENV = dict(harness.ENV, DAEDALUS_CPU_ISA="generic")
COORDINATOR_FLAGS = ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "3", "--stall-timeout", "3"]


class Cluster:
    def __init__(self, d, model, tmp):
        self.d, self.model, self.tmp = d, model, tmp
        self.address = f"127.0.0.1:{free_port()}"
        self.coordinator = self.workers = None
        self.log = open(os.path.join(tmp, "coordinator.log"), "a")
        self.workers_log_path = os.path.join(tmp, "workers.log")

    def start_coordinator(self):
        self.coordinator = subprocess.Popen(
            [self.d, "coordinator", "--model", self.model, "--world-size", "2", "--listen", self.address] + COORDINATOR_FLAGS,
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=ENV)
        line = self.coordinator.stdout.readline()
        check(line.startswith("listening"), "the coordinator listens", line)

    def kill_coordinator(self):
        self.coordinator.send_signal(signal.SIGKILL)
        self.coordinator.wait(timeout=30)

    def launch_workers(self, fault_env, args=()):
        env = dict(ENV, **fault_env)
        with open(self.workers_log_path, "a") as log:
            log.write(f"--- launch with {fault_env}\n")
        self.workers = subprocess.Popen(
            MPIRUN + ["-np", "2"] + sum([["-x", k] for k in fault_env], []) +
            [self.d, "worker", "--coordinator", self.address, "--model", self.model, "--threads", "1",
             "--kv-cache-tokens", "8192"] + list(args),
            stdout=open(self.workers_log_path, "a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop_workers(self):
        if self.workers and self.workers.poll() is None:
            os.killpg(self.workers.pid, signal.SIGTERM)
            try:
                self.workers.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.workers.pid, signal.SIGKILL)
                self.workers.wait()

    def status(self):
        p = run([self.d, "status", "--server", self.address, "--json"], timeout=30)
        if p.returncode != 0:
            return {"state": "unreachable", "detail": p.stderr.strip(), "workers": []}
        return json.loads(p.stdout)

    def wait_serving(self, seconds):
        until = time.time() + seconds
        while time.time() < until:
            s = self.status()
            if s.get("state") == "serving":
                return s
            time.sleep(0.1)
        return self.status()

    def pids(self):
        return sorted(int(w["pid"]) for w in self.status()["workers"])

    def pid_of_rank(self):
        return {int(w["rank"]): int(w["pid"]) for w in self.status()["workers"]}

    def generate(self, *args, timeout=120):
        return run([self.d, "generate", "--server", self.address, "--json"] + list(args), timeout=timeout)

    def generate_bg(self, *args):
        return subprocess.Popen([self.d, "generate", "--server", self.address, "--json"] + list(args),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)

    def wait_running(self, n, seconds):
        until = time.time() + seconds
        while time.time() < until:
            if sum(int(w["running"]) for w in self.status()["workers"]) >= n:
                return True
            time.sleep(0.05)
        return False

    def long_stream(self, args):
        """Starts a stream and returns it once the coordinator counts it running. One that ends
        before it is seen running (the tiny model's 4,000 tokens take a few seconds) is started
        again, up to 3 times, each attempt's status and output printed."""
        for attempt in range(3):
            stream = self.generate_bg(*args)
            seen = self.wait_running(1, 10)
            if seen and stream.poll() is None:
                check(True, "a long stream runs")
                return stream
            stream.kill()
            out, err = stream.communicate(timeout=30)
            print(f"     (attempt {attempt + 1}: seen running {seen}; the stream: {out[-200:]!r} {err[-200:]!r}; "
                  f"status {self.status()})", flush=True)
        check(False, "a long stream runs")
        return self.generate_bg(*args)

    def stop(self):
        self.stop_workers()
        if self.coordinator and self.coordinator.poll() is None:
            self.coordinator.send_signal(signal.SIGTERM)
            self.coordinator.wait(timeout=30)


def main():
    d = daedalus()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(d, tmp)
        prompt = ["--prompt-ids", "9,8,7,6", "--max-new-tokens", "12"]
        reference = lines(run([d, "run", "--model", model] + prompt, env=ENV).stdout)[0]["generated_ids"]
        long = ["--prompt-ids", "1,2,3", "--max-new-tokens", "4000", "--ignore-eos"]

        def answers_like_run(what):
            p = cluster.generate(*prompt)
            got = lines(p.stdout)
            check(p.returncode == 0 and got and got[0].get("generated_ids") == reference, what, p.stdout[-300:] + p.stderr[-300:])

        cluster = Cluster(d, model, tmp)
        try:
            # Slow rank, then a dropped control stream, in one launch.
            cluster.start_coordinator()
            cluster.launch_workers({"DAEDALUS_FAULT_STALL": "1:2:1500:alltoall", "DAEDALUS_FAULT_DROP_ON_SIGUSR1": "1"})
            s = cluster.wait_serving(120)
            check(s["state"] == "serving", "2 workers register; the cluster serves", s.get("detail"))
            pids = cluster.pids()
            start = time.time()
            answers_like_run("a slow rank (1.5 s stall mid-step): the tokens of `run`")
            took = time.time() - start
            print(f"measured: a request across the 1.5 s stall took {took:.2f} s", flush=True)
            check(took >= 1.5, "the stall happened", f"{took:.2f} s")
            check(cluster.status()["state"] == "serving", "a slow rank within --stall-timeout is not lost")

            rank1 = next(int(w["pid"]) for w in cluster.status()["workers"] if w["rank"] == 1)
            stream = cluster.long_stream(long)
            os.kill(rank1, signal.SIGUSR1)  # rank 1 cuts its control stream
            out, _ = stream.communicate(timeout=60)
            ended = time.time()
            got = lines(out)
            # It names rank 1, or rank 0 when rank 0's own stream, closed as it leaves to register
            # again with rank 1, reaches the coordinator first.
            error = got[0].get("error", {}) if got else {}
            check(error.get("code") == "UNAVAILABLE" and re.search(r"worker rank [01] .* lost", error.get("message", "")),
                  "dropped control stream: the open stream ends UNAVAILABLE naming the lost worker", str(error) or out[-300:])
            log = open(cluster.workers_log_path).read()
            drops = re.findall(r"dropping the control stream at ([0-9.]+)", log)
            check(len(drops) == 1, "the fault was injected once", log[-500:])
            if drops:
                measured("dropped control stream to UNAVAILABLE at the client", ended - float(drops[0]), 2)
                s = cluster.wait_serving(30)
                measured("dropped control stream to serving again (same processes)", time.time() - float(drops[0]), 15)
                check(cluster.pids() == pids, "the same worker processes re-registered (no restart)", (pids, cluster.pids()))
            answers_like_run("after the re-formation: the tokens of `run`")

            # The coordinator killed and restarted while the workers run.
            stream = cluster.long_stream(long)
            cluster.kill_coordinator()
            out, _ = stream.communicate(timeout=60)
            got = lines(out)
            check(got and got[0].get("error", {}).get("code") == "UNAVAILABLE", "coordinator killed: its open stream ends UNAVAILABLE",
                  out[-300:])
            p = cluster.generate(*prompt, "--timeout", "5")
            got = lines(p.stdout)
            check(p.returncode != 0 and got and got[0]["error"]["code"] == "UNAVAILABLE", "no coordinator: UNAVAILABLE", p.stdout[-300:])
            restarted = time.time()
            cluster.start_coordinator()
            p = cluster.generate(*prompt)
            got = lines(p.stdout)
            if p.returncode != 0:
                check(got and got[0]["error"]["code"] == "UNAVAILABLE", "before the workers are back: UNAVAILABLE", p.stdout[-300:])
            s = cluster.wait_serving(60)
            measured("coordinator restart to serving (workers re-registered)", time.time() - restarted, 15)
            check(cluster.pids() == pids, "the same worker processes serve the new coordinator", (pids, cluster.pids()))
            answers_like_run("after the coordinator restart: the tokens of `run`")
            cluster.stop_workers()

            # Heartbeats but no steps: rank 1 stalls 10 s in its first step (all-to-all 0 shares the launch id).
            cluster.launch_workers({"DAEDALUS_FAULT_STALL": "1:1:10000:alltoall"})
            s = cluster.wait_serving(120)
            check(s["state"] == "serving", "a new launch serves", s.get("detail"))
            sent = time.time()
            p = cluster.generate(*prompt)
            ended = time.time()
            got = lines(p.stdout)
            err = got[0].get("error", {}) if got else {}
            check(err.get("code") == "UNAVAILABLE" and "no step has finished" in err.get("message", ""),
                  "heartbeats without steps: UNAVAILABLE naming the stall", p.stdout[-400:])
            measured("stalled steps to UNAVAILABLE at the client (--stall-timeout 3)", ended - sent, 4.5)
            s = cluster.status()
            check(s["state"] == "degraded" and "no step has finished" in s.get("detail", ""), "the cluster reports the stall",
                  s.get("detail"))
            s = cluster.wait_serving(60)
            check(s["state"] == "serving", "when the stall ends, the workers re-form by themselves", s.get("detail"))
            measured("stall start to serving again (10 s stall)", time.time() - sent, 25)
            answers_like_run("after the stall: the tokens of `run`")
            cluster.stop_workers()

            # The coordinator restarted under a ucx data plane: the workers keep their endpoints
            # and their ranks, and register again with them.
            cluster.launch_workers({}, ["--transport", "ucx"])
            s = cluster.wait_serving(120)
            check(s["state"] == "serving", "ucx: 2 workers register; the cluster serves", s.get("detail"))
            ranks = cluster.pid_of_rank()
            answers_like_run("ucx: the tokens of `run`")
            cluster.kill_coordinator()
            restarted = time.time()
            cluster.start_coordinator()
            s = cluster.wait_serving(60)
            measured("ucx: coordinator restart to serving (workers re-registered)", time.time() - restarted, 15)
            check(cluster.pid_of_rank() == ranks, "ucx: the same processes serve with the same ranks", (ranks, cluster.pid_of_rank()))
            answers_like_run("ucx, after the coordinator restart: the tokens of `run`")
        finally:
            try:
                cluster.stop()
            finally:  # the logs even when stopping fails
                if failures:
                    dump_logs(tmp, ["coordinator.log", "workers.log"])
    finish()


if __name__ == "__main__":
    main()
