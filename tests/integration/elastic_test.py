"""Elastic expert parallelism with real processes: a coordinator and 3 workers, each its own
process on the ucx data plane (tiny preset, no redundant experts, so the lost worker's experts
must be read from the checkpoint by the survivors).

Under 24 concurrent streams (greedy and sampled), one worker is killed (SIGKILL) mid-stream:
- no request fails, and every request's tokens — and, for a third of them, the top-3
  log-probabilities, compared exactly — equal `run` on the same prompts, greedy and sampled
  alike (sampling depends on (seed, position) only, so a stream that continues on a survivor
  draws what it would have drawn);
- the survivors serve on as a new generation of 2, their processes unchanged, with a placement
  that covers every expert, and say which experts they read from the checkpoint.
The coordinator is then killed and restarted: the two survivors register with it as a world
of two, keeping their processes. Then a new worker process joins the running cluster as rank 2: the survivors are not re-formed
from scratch (same processes, no re-registration), experts move onto it, and the same prompts
give the same tokens again. Last, that worker hangs mid-step while its heartbeats go on: the
others' collectives time out, both name it, and the cluster goes on without it, again with no
failed request. Last, a third worker joins and two of the three are made to hang at once: the
one left names both, and both are lost once --heartbeat-timeout passes (or, when one was already
waiting for the other as its signal came, they hang and are lost one after the other), again
with no failed request. The rule for ranks hung together is tested exactly in
elastic_state_test. Detection and recovery times are printed ("measured: ...")."""
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from harness import ENV, check, check_answers, daedalus, dump_logs, failures, finish, free_port, lines, make_model, measured, run, stop_cluster, wait_for

REQUESTS = 24
# Every worker can be made to hang mid-step (SIGUSR2: its next all-to-all first sleeps 20 s,
# its heartbeats going on).
STALL = {"DAEDALUS_FAULT_STALL_ON_SIGUSR2": "20000"}


class Cluster:
    def __init__(self, d, model, tmp):
        self.d, self.model, self.tmp = d, model, tmp
        self.address = f"127.0.0.1:{free_port()}"
        self.log = open(os.path.join(tmp, "coordinator.log"), "a")
        self.start_coordinator()
        self.workers = []

    def start_coordinator(self):
        self.coordinator = subprocess.Popen(
            [self.d, "coordinator", "--model", self.model, "--world-size", "3", "--listen", self.address,
             "--heartbeat-interval", "0.5", "--heartbeat-timeout", "3"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=ENV)
        line = self.coordinator.stdout.readline()
        check(line.startswith("listening"), "the coordinator listens", line)

    def start_worker(self, env=None):
        n = len(self.workers)
        log = open(os.path.join(self.tmp, f"worker{n}.log"), "w")
        self.workers.append(subprocess.Popen(
            [self.d, "worker", "--coordinator", self.address, "--model", self.model, "--transport", "ucx", "--threads", "1",
             "--kv-cache-tokens", "8192", "--collective-timeout", "3"], stdout=log, stderr=subprocess.STDOUT,
            env=dict(ENV, **(env or {})), start_new_session=True))
        return self.workers[-1]

    def status(self):
        p = run([self.d, "status", "--server", self.address, "--json"], timeout=30)
        return json.loads(p.stdout) if p.returncode == 0 else {"state": "unreachable", "workers": [], "detail": p.stderr}

    def generate_bg(self, prompts):
        return subprocess.Popen([self.d, "generate", "--server", self.address, "--json", "--prompts", prompts,
                                 "--concurrency", str(REQUESTS), "--timeout", "240"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)

    def stop(self):
        stop_cluster(self.coordinator, self.workers)


def covers_every_expert(status, n_experts, world):
    """Every MoE layer places each expert on at least one of `world` ranks, and names no other rank."""
    for layer in status.get("layers", []):
        on = layer.get("experts_on", [])
        placed = {e for ranks in on for e in ranks.get("experts", [])}
        if len(on) != world or placed != set(range(n_experts)):
            return False
    return bool(status.get("layers"))


def main():
    d = daedalus()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(d, tmp)
        n_experts = json.load(open(os.path.join(model, "config.json")))["n_routed_experts"]
        prompts = os.path.join(tmp, "prompts.jsonl")
        with open(prompts, "w") as f:
            for i in range(REQUESTS):
                # Long enough that a worker still runs its sequences when the test, having seen them
                # running, kills it (96 tokens left a ~0.2 s window, which a loaded machine missed).
                r = {"id": f"r{i}", "prompt_ids": [(7 * i + k) % 500 + 1 for k in range(8 + i % 5)], "max_new_tokens": 192,
                     "ignore_eos": True}
                if i % 2:
                    r.update(temperature=0.8, top_p=0.95, seed=1000 + i)
                if i % 3 == 0:
                    r.update(logprobs=3)
                f.write(json.dumps(r) + "\n")
        reference = {r["id"]: (r["generated_ids"], r.get("logprobs"))
                     for r in lines(run([d, "run", "--model", model, "--prompts", prompts]).stdout)}
        check(len(reference) == REQUESTS, "run answers every prompt", len(reference))

        cluster = Cluster(d, model, tmp)
        try:
            for _ in range(3):
                cluster.start_worker(STALL)
            s = wait_for(lambda: cluster.status().get("state") == "serving" and cluster.status(), 120)
            check(s and s.get("elastic") is True and len(s["workers"]) == 3, "3 ucx workers form an elastic cluster", s)
            generation = int(s.get("generation", 0))

            # A worker killed under 24 concurrent streams.
            stream = cluster.generate_bg(prompts)
            busy = wait_for(lambda: all(int(w.get("running", 0)) > 0 for w in cluster.status()["workers"]), 60, 0.05)
            check(busy, "every worker runs sequences")
            pid_of_rank = {int(w["rank"]): int(w["pid"]) for w in cluster.status()["workers"]}
            victim = pid_of_rank[1]
            victim_index = [w.pid for w in cluster.workers].index(victim)
            os.kill(victim, signal.SIGKILL)
            killed = time.time()
            s = wait_for(lambda: len(cluster.status()["workers"]) == 2 and cluster.status(), 30, 0.05)
            measured("worker killed to the cluster serving as 2 (detection and re-formation)", time.time() - killed, 5)
            check_answers(stream, "one worker killed mid-stream", reference)
            s = cluster.status()
            survivors = sorted(int(w["pid"]) for w in s["workers"])
            check(survivors == sorted(p for r, p in pid_of_rank.items() if r != 1), "the survivors' processes serve on",
                  (survivors, pid_of_rank))
            check(s["state"] == "serving" and int(s["generation"]) == generation + 1, "a new generation of 2 serves",
                  (s["state"], s.get("generation")))
            check(covers_every_expert(s, n_experts, 2), "the placement over the survivors covers every expert")
            continued = re.search(r"lost: .*, (\d+) of its sequences continue on them", open(os.path.join(tmp, "coordinator.log")).read())
            check(continued and int(continued.group(1)) > 0, "the lost worker's sequences continued on the survivors",
                  continued and continued.group(0))
            logs = "".join(open(os.path.join(tmp, f"worker{i}.log")).read() for i in range(3))
            check(re.search(r"re-formed as rank [01] of 2 .*read \d+ experts it now serves from the checkpoint", logs),
                  "survivors read the experts that lost their only copy from the checkpoint", logs[-600:])

            # The coordinator restarted after the shrink: the two survivors register with it as the
            # world of two they are, keeping their processes, endpoints and ranks.
            cluster.coordinator.send_signal(signal.SIGKILL)
            cluster.coordinator.wait(timeout=30)
            restarted = time.time()
            cluster.start_coordinator()
            s = wait_for(lambda: cluster.status().get("state") == "serving" and cluster.status(), 60, 0.1)
            measured("coordinator restarted after the shrink to serving again with the 2 survivors", time.time() - restarted, 15)
            check(s and sorted(int(w["pid"]) for w in s["workers"]) == survivors and int(s["generation"]) > generation + 1,
                  "the survivors form a world of two with the new coordinator, numbered above the old one",
                  s and (s.get("generation"), [w["pid"] for w in s["workers"]]))
            generation = int(s["generation"]) if s else 0
            check_answers(cluster.generate_bg(prompts), "after the coordinator restart", reference)

            # A new process joins the running cluster. (It can be made to hang mid-step, below.)
            joined_at = time.time()
            joiner = cluster.start_worker(STALL)
            s = wait_for(lambda: len(cluster.status()["workers"]) == 3 and cluster.status(), 60, 0.1)
            measured("a new worker's start to serving as rank 2", time.time() - joined_at, 30)
            check(s and s["state"] == "serving" and int(s["generation"]) == generation + 1, "the joiner makes one more generation",
                  s and s.get("generation"))
            check(s and sorted(int(w["pid"]) for w in s["workers"] if int(w["rank"]) < 2) == survivors,
                  "the survivors keep their processes and ranks across the join")
            coordinator_log = open(os.path.join(tmp, "coordinator.log")).read()
            check("joined; the cluster serves with 3 workers" in coordinator_log, "the coordinator logs the join",
                  coordinator_log[-600:])
            moved = wait_for(lambda: covers_every_expert(cluster.status(), n_experts, 3) and any(
                layer["experts_on"][2].get("experts") for layer in cluster.status()["layers"]), 30)
            check(moved, "experts move onto the joiner, and every expert stays placed")
            switched = wait_for(lambda: all(re.search(r"switched to a new expert placement: \d+ experts read, [1-9]\d* held",
                                                      open(os.path.join(tmp, f"worker{i}.log")).read())
                                            for i in range(4) if i != victim_index), 30)
            check(switched, "every worker, the joiner too, switches to the placement that moves experts onto it")
            check_answers(cluster.generate_bg(prompts), "after the join", reference)

            # The joiner hangs mid-step (20 s), its heartbeats going on: the others' collectives
            # time out (--collective-timeout 3), they both name it, and the cluster goes on without it.
            generation = int(cluster.status()["generation"])
            stream = cluster.generate_bg(prompts)
            check(wait_for(lambda: all(int(w.get("running", 0)) > 0 for w in cluster.status()["workers"]), 60, 0.05),
                  "every worker runs sequences again")
            os.kill(joiner.pid, signal.SIGUSR2)
            hung = time.time()
            s = wait_for(lambda: len(cluster.status()["workers"]) == 2 and cluster.status(), 30, 0.1)
            measured("a worker hung mid-step to the cluster serving without it (collective timeout 3 s)", time.time() - hung, 8)
            check_answers(stream, "a worker hung mid-step", reference)
            s = cluster.status()
            check(int(s["generation"]) == generation + 1 and joiner.pid not in [int(w["pid"]) for w in s["workers"]],
                  "a new generation without the hung worker", (s.get("generation"), [w["pid"] for w in s["workers"]]))
            coordinator_log = open(os.path.join(tmp, "coordinator.log")).read()
            check("lost: every other worker's collective timed out waiting for it" in coordinator_log,
                  "the coordinator says why: every other worker waited for it", coordinator_log[-400:])

            # Two of three hang together: neither can be named by both others, so the one left
            # names both, and they are lost together once --heartbeat-timeout (3 s) has passed
            # without either reporting. (A signal that reaches a rank already blocked waiting for
            # the other hangs it only at its next all-to-all: then it reports, the first is lost
            # alone, and it hangs in the world of two and is lost in turn.)
            log_path = os.path.join(tmp, "coordinator.log")
            one_at_a_time = open(log_path).read().count("lost: every other worker's collective timed out waiting for it")
            cluster.start_worker(STALL)
            s = wait_for(lambda: len(cluster.status()["workers"]) == 3 and cluster.status(), 60, 0.1)
            check(s and s["state"] == "serving", "a third worker joins again", s and s.get("state"))
            generation = int(cluster.status()["generation"])
            stream = cluster.generate_bg(prompts)
            check(wait_for(lambda: all(int(w.get("running", 0)) > 0 for w in cluster.status()["workers"]), 60, 0.05),
                  "all three run sequences")
            by_rank = {int(w["rank"]): int(w["pid"]) for w in cluster.status()["workers"]}
            for rank in (1, 2):
                os.kill(by_rank[rank], signal.SIGUSR2)
            hung = time.time()
            s = wait_for(lambda: len(cluster.status()["workers"]) == 1 and cluster.status(), 40, 0.1)
            measured("two workers hung together to the cluster serving without both (collective timeout 3 s, grace 3 s)",
                     time.time() - hung, 12)
            check_answers(stream, "two workers hung together", reference)
            s = cluster.status()
            check([int(w["pid"]) for w in s["workers"]] == [by_rank[0]] and int(s["generation"]) == generation + 2,
                  "the worker left serves alone, two generations on (one per loss)",
                  (s.get("generation"), [w["pid"] for w in s["workers"]]))
            log = open(log_path).read()
            together = "lost: hung with 1 other rank(s)" in log
            apart = log.count("lost: every other worker's collective timed out waiting for it") - one_at_a_time == 2
            print(f"measured: the two hung workers were lost {'together' if together else 'one after the other'}", flush=True)
            check(together or apart, "the coordinator says why: hung together, named by every worker that reported (or, "
                  "hung one after the other, each named by every other)", log[-600:])
        finally:
            try:
                cluster.stop()
            finally:  # the logs even when stopping fails
                if failures:
                    dump_logs(tmp, ["coordinator.log", "worker0.log", "worker1.log", "worker2.log", "worker3.log"])
    finish()


if __name__ == "__main__":
    main()
