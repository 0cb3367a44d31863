"""The cluster end to end, over real sockets and a real mpirun: a coordinator and 3 workers on
the tiny preset; 16 concurrent streaming clients get exactly the single-process tokens;
authentication, invalid arguments, cancellation, admission deadline and queue limit each get
their status code and the cluster serves the next request; killing a worker ends every open
stream with UNAVAILABLE within 10 s, and a new launch of the workers serves again."""
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from harness import MPIRUN, check, daedalus, dump_logs, failures, finish, lines, make_model, run

# The generic CPU tier, for every process here (cluster and single-process runs alike, so tokens
# still compare exactly): its plain loops keep the full-cluster round's long sequences alive for
# ~5 s; the vector tiers finish them in ~2 s, before a loaded machine has run the checks.
ENV = dict(os.environ, OMP_NUM_THREADS="1", DAEDALUS_CPU_ISA="generic")
TOKEN, SECRET = "test-token", "test-secret"


class Cluster:
    def __init__(self, d, model, tmp, world, extra):
        self.d, self.model, self.tmp, self.world = d, model, tmp, world
        self.log = open(os.path.join(tmp, "coordinator.log"), "w")
        self.coordinator = subprocess.Popen(
            [d, "coordinator", "--model", model, "--world-size", str(world), "--listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", "--auth-token", TOKEN, "--cluster-secret", SECRET] + extra,
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=ENV)
        self.address = self.coordinator.stdout.readline().split()[1]
        self.metrics = self.coordinator.stdout.readline().split()[1]
        self.workers = None

    def launch_workers(self, extra=()):
        env = dict(ENV, DAEDALUS_CLUSTER_SECRET=SECRET)
        self.workers_log = open(os.path.join(self.tmp, "workers.log"), "a")
        self.workers = subprocess.Popen(
            MPIRUN + ["-np", str(self.world), self.d, "worker", "--coordinator", self.address, "--model", self.model,
                      "--threads", "1", "--kv-cache-tokens", "4096"] + list(extra),
            stdout=self.workers_log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def status(self):
        p = run([self.d, "status", "--server", self.address, "--auth-token", TOKEN, "--json"], 30, ENV)
        if p.returncode != 0:
            return {"state": "unreachable", "detail": p.stderr, "workers": [], "queued": 0}
        s = json.loads(p.stdout)  # protobuf's JSON writes int64 as strings
        for w in s["workers"]:
            for k in ["pid", "kv_capacity_tokens", "kv_used_tokens", "running"]:
                w[k] = int(w[k])
        s["queued"] = int(s["queued"])
        s["requests_by_outcome"] = {k: int(v) for k, v in s["requests_by_outcome"].items()}
        return s

    def wait_state(self, state, seconds):
        until = time.time() + seconds
        while time.time() < until:
            s = self.status()
            if s.get("state") == state:
                return s
            time.sleep(0.2)
        return self.status()

    def generate(self, *args, token=TOKEN, timeout=300):
        cmd = [self.d, "generate", "--server", self.address, "--json"] + list(args)
        if token:
            cmd += ["--auth-token", token]
        return run(cmd, timeout, ENV)

    def generate_bg(self, *args):
        cmd = [self.d, "generate", "--server", self.address, "--json", "--auth-token", TOKEN] + list(args)
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)

    def stop(self):
        if self.workers and self.workers.poll() is None:
            os.killpg(self.workers.pid, signal.SIGTERM)
            self.workers.wait(timeout=30)
        self.coordinator.send_signal(signal.SIGTERM)
        self.coordinator.wait(timeout=30)


def write_prompts(path, reqs):
    with open(path, "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")


def main():
    d = daedalus()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(d, tmp)
        prompts = os.path.join(tmp, "prompts.jsonl")
        reqs = []
        for i in range(16):  # uneven lengths; some sampled with their own seeds
            r = {"id": f"r{i}", "prompt_ids": [(i * 41 + j * 13) % 512 for j in range(2 + 7 * i)],
                 "max_new_tokens": 3 + (i * 5) % 17}
            if i % 4 == 3:
                r.update(temperature=0.8, top_p=0.9, top_k=50, seed=100 + i)
            reqs.append(r)
        write_prompts(prompts, reqs)
        single = run([d, "run", "--model", model, "--prompts", prompts], 300, ENV)
        check(single.returncode == 0, "single-process run", single.stderr[-300:])
        expected = {r["id"]: r for r in lines(single.stdout)}

        cluster = Cluster(d, model, tmp, 3, ["--max-queue", "2", "--heartbeat-timeout", "10", "--redundant-experts", "3",
                                             "--rebalance-interval", "1"])
        try:
            s = cluster.status()
            check(s["state"] == "forming", "coordinator without workers is forming", s)
            p = cluster.generate("--prompt-ids", "1,2,3")
            got = lines(p.stdout)
            check(p.returncode != 0 and got and got[0]["error"]["code"] == "UNAVAILABLE",
                  "a request before the workers registered: UNAVAILABLE", p.stdout)

            # A stray worker with the wrong secret cannot join.
            stray = run([d, "worker", "--coordinator", cluster.address, "--model", model, "--cluster-secret", "wrong",
                         "--register-timeout", "10"], timeout=60, env=ENV)
            check(stray.returncode != 0 and "cluster secret" in stray.stderr, "a worker with the wrong secret is refused",
                  stray.stderr[-300:])

            cluster.launch_workers()
            s = cluster.wait_state("serving", 180)
            check(s["state"] == "serving" and len(s["workers"]) == 3, "3 workers register; the cluster serves", s.get("detail"))

            # 16 concurrent streams: the single-process tokens, spread over the workers.
            p = cluster.generate("--prompts", prompts, "--concurrency", "16")
            got = {r["id"]: r for r in lines(p.stdout)}
            same = p.returncode == 0 and len(got) == 16 and all(
                got[i]["generated_ids"] == expected[i]["generated_ids"] and
                got[i]["finish_reason"] == expected[i]["finish_reason"] for i in expected)
            check(same, "16 concurrent streaming clients: every result equals the single-process run",
                  p.stderr[-300:] + str([(i, got.get(i), expected[i]) for i in expected if got.get(i, {}).get("generated_ids") != expected[i]["generated_ids"]][:2]))
            ranks = {r.get("worker_rank") for r in got.values()}
            check(len(ranks) == 3, "attention is sharded over all 3 workers", ranks)
            # The measured load gives a better placement: the coordinator sends it, every worker
            # switches at one step boundary, and no token changes.
            until, s = time.time() + 15, {}
            while time.time() < until:
                s = cluster.status()
                if int(s.get("placement_version", 0)) >= 1:
                    break
                time.sleep(0.2)
            check(int(s.get("placement_version", 0)) >= 1, "a new expert placement from the measured load is sent",
                  f"imbalance {s.get('imbalance')}")
            p = cluster.generate("--prompts", prompts, "--concurrency", "16")
            again = {r["id"]: r for r in lines(p.stdout)}
            check(p.returncode == 0 and all(again[i]["generated_ids"] == expected[i]["generated_ids"] for i in expected),
                  f"after the placement update (imbalance now {float(s.get('imbalance', 0)):.3f}): the same tokens")
            usage_ok = all(got[i]["usage"]["completion_tokens"] == len(got[i]["generated_ids"]) and
                           got[i]["usage"]["prompt_tokens"] == len(reqs[int(i[1:])]["prompt_ids"]) for i in got)
            check(usage_ok, "usage counts prompt and completion tokens")

            # Generic gRPC tools work: standard health checking and server reflection, spoken here
            # with raw protobuf bytes (grpc.health.v1.HealthCheckRequest{service}, and
            # ServerReflectionRequest{list_services: ""}).
            import grpc
            with grpc.insecure_channel(cluster.address) as channel:
                check_health = channel.unary_unary("/grpc.health.v1.Health/Check")
                service = b"daedalus.v1.Serving"
                answer = check_health(b"\x0a" + bytes([len(service)]) + service, timeout=10)
                check(answer == b"\x08\x01", "gRPC health check: daedalus.v1.Serving is SERVING", answer)
                reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
                replies = b"".join(reflect(iter([b"\x3a\x00"]), timeout=10))
                check(b"daedalus.v1.Serving" in replies and b"daedalus.v1.Cluster" in replies,
                      "server reflection lists the services", replies[:200])

            # Authentication.
            p = cluster.generate("--prompt-ids", "1,2,3", token=None)
            got = lines(p.stdout)
            check(p.returncode != 0 and got and got[0]["error"]["code"] == "UNAUTHENTICATED", "no bearer token: UNAUTHENTICATED")
            p = cluster.generate("--prompt-ids", "1,2,3", token="wrong")
            got = lines(p.stdout)
            check(p.returncode != 0 and got and got[0]["error"]["code"] == "UNAUTHENTICATED", "wrong bearer token: UNAUTHENTICATED")

            # Invalid arguments name the field.
            for args, field in [(["--prompt-ids", "1,512"], "prompt_ids[1]"), (["--prompt-ids", "1", "--temperature", "-1"], "temperature"),
                                (["--prompt-ids", "1", "--top-p", "1.5"], "top_p"),
                                (["--prompt-ids", "1", "--max-new-tokens", "5000"], "context")]:
                p = cluster.generate(*args)
                got = lines(p.stdout)
                ok = p.returncode != 0 and got and got[0]["error"]["code"] == "INVALID_ARGUMENT" and field in got[0]["error"]["message"]
                check(ok, f"invalid {field}: INVALID_ARGUMENT naming it", p.stdout)
            p = cluster.generate("--prompt-ids", "5,6,7", "--max-new-tokens", "4", "--logprobs", "3")
            got = lines(p.stdout)
            ok = p.returncode == 0 and len(got[0]["generated_ids"]) == 4 and all(
                len(t["top_logprobs"]) == 3 and t["top_logprobs"][0]["logprob"] >= t["logprob"] - 1e-6 for t in got[0]["logprobs"])
            check(ok, "the cluster serves the next request, with top-3 logprobs", p.stdout[-300:])

            # Cancellation: a client that gives up frees its sequence on the worker.
            p = cluster.generate("--prompt-ids", "1,2,3", "--max-new-tokens", "4000", "--ignore-eos", "--timeout", "1")
            got = lines(p.stdout)
            check(p.returncode != 0 and got and got[0]["error"]["code"] == "DEADLINE_EXCEEDED", "client deadline ends the call")
            until, s = time.time() + 10, {}
            while time.time() < until:
                s = cluster.status()
                if all(w["kv_used_tokens"] == 0 and w["running"] == 0 for w in s["workers"]):
                    break
                time.sleep(0.2)
            check(all(w["kv_used_tokens"] == 0 for w in s["workers"]) and s["requests_by_outcome"].get("cancelled", 0) >= 1,
                  "the cancelled sequence's KV reservation is freed", s)

            # Full cluster: 3 long sequences (3 + 4090 tokens) fill the 3 workers' caches (4096 each).
            # They run for a few seconds only (tiny model), so on a slow machine one may end before
            # the checks: then, and only then, the round is repeated, up to 5 times.
            for attempt in range(5):
                longs = [cluster.generate_bg("--prompt-ids", "1,2,3", "--max-new-tokens", "4090", "--ignore-eos")
                         for _ in range(3)]
                until = time.time() + 30
                while time.time() < until and sum(w["running"] for w in cluster.status()["workers"]) < 3:
                    time.sleep(0.1)
                p = cluster.generate("--prompt-ids", "1,2,3", "--queue-timeout-ms", "300")
                got = lines(p.stdout)
                timeout_ok = (p.returncode != 0 and got and got[0]["error"]["code"] == "RESOURCE_EXHAUSTED"
                              and "not admitted" in got[0]["error"]["message"])
                timeout_detail = p.stdout
                queued = [cluster.generate_bg("--prompt-ids", "1,2,3", "--max-new-tokens", "2") for _ in range(2)]
                until = time.time() + 10
                while time.time() < until and cluster.status()["queued"] < 2:
                    time.sleep(0.05)
                p = cluster.generate("--prompt-ids", "1,2,3")
                got = lines(p.stdout)
                limit_ok = (p.returncode != 0 and got and got[0]["error"]["code"] == "RESOURCE_EXHAUSTED"
                            and "queue limit" in got[0]["error"]["message"])
                limit_detail = p.stdout
                ended_early = any(proc.poll() is not None for proc in longs)
                for proc in longs:  # clients that go away: their sequences end and the queue drains
                    proc.kill()
                outs = [q.communicate(timeout=60)[0] for q in queued]
                if (timeout_ok and limit_ok) or not ended_early:
                    break
                print(f"     (round {attempt + 1}: a long sequence ended before the checks; again)")
            check(timeout_ok, "not admitted within its queue timeout: RESOURCE_EXHAUSTED", timeout_detail)
            check(limit_ok, "over the queue limit: RESOURCE_EXHAUSTED", limit_detail)
            check(all(lines(o) and lines(o)[0].get("finish_reason") == "length" for o in outs),
                  "queued requests are admitted once the cancelled sequences free their caches", outs)

            # Metrics.
            no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
            text = no_proxy.open(cluster.metrics, timeout=10).read().decode()
            for needle in ['daedalus_requests_total{outcome="ok"}', 'daedalus_requests_total{outcome="resource_exhausted"}',
                           "daedalus_time_to_first_token_seconds_bucket", "daedalus_inter_token_latency_seconds_count",
                           'daedalus_kv_used_tokens{rank="2"}', 'daedalus_expert_tokens_total{layer="1",expert="0"}']:
                check(needle in text, f"/metrics has {needle}")

            # A worker dies mid-generation.
            streams = [cluster.generate_bg("--prompt-ids", "1,2,3", "--max-new-tokens", "4000", "--ignore-eos") for _ in range(3)]
            until = time.time() + 30
            while time.time() < until and sum(w["running"] for w in cluster.status()["workers"]) < 3:
                time.sleep(0.1)
            victim = next(w for w in cluster.status()["workers"] if w["rank"] == 1)
            killed_at = time.time()
            os.kill(int(victim["pid"]), signal.SIGKILL)
            ends = []
            for proc in streams:
                try:
                    out, _ = proc.communicate(timeout=max(0.1, killed_at + 10 - time.time()))
                    ends.append((time.time() - killed_at, lines(out)))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    ends.append((None, []))
            ok = all(t is not None and t <= 10 and got and got[0]["error"]["code"] == "UNAVAILABLE" for t, got in ends)
            check(ok, "killing worker rank 1: every open stream ends UNAVAILABLE within 10 s",
                  [(t, got[0]["error"] if got and "error" in got[0] else got) for t, got in ends])
            named = any("worker rank 1" in got[0]["error"]["message"] for t, got in ends if got and "error" in got[0])
            check(named, "the error names the lost rank", ends)
            s = cluster.wait_state("degraded", 5)
            check(s["state"] == "degraded" and "worker rank 1" in s["detail"], "the coordinator reports the cluster degraded", s.get("detail"))
            p = cluster.generate("--prompt-ids", "1,2,3")
            got = lines(p.stdout)
            check(p.returncode != 0 and got and got[0]["error"]["code"] == "UNAVAILABLE" and "degraded" in got[0]["error"]["message"],
                  "new requests are refused with a clear message", p.stdout)
            try:
                cluster.workers.wait(timeout=60)  # mpirun ends the rest of the job
            except subprocess.TimeoutExpired:
                os.killpg(cluster.workers.pid, signal.SIGKILL)
                cluster.workers.wait()
            cluster.launch_workers()
            s = cluster.wait_state("serving", 180)
            check(s["state"] == "serving", "relaunched workers re-register and the cluster serves again", s.get("detail"))
            p = cluster.generate("--prompts", prompts, "--concurrency", "16")
            got = {r["id"]: r for r in lines(p.stdout)}
            check(p.returncode == 0 and all(got[i]["generated_ids"] == expected[i]["generated_ids"] for i in expected),
                  "after the restart: the single-process results again")
        finally:
            try:
                cluster.stop()
            finally:  # the logs even when stopping fails
                if failures:
                    dump_logs(tmp, ["coordinator.log", "workers.log"])
    finish()


if __name__ == "__main__":
    main()
