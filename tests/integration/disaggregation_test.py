"""Prefill/decode disaggregation with real processes: a coordinator with a prefill group and a
decode group of 2 workers each, every worker its own process on the ucx data plane (tiny
preset). The decode workers start each read of a sequence's pages 1.5 s late
(DAEDALUS_FAULT_KV_READ_DELAY_MS), so that a prefill worker can be killed mid-transfer.

- Wrong role flags are clear errors: a decode-only cluster, more roles than the world size,
  a mixed worker at a disaggregated coordinator and a prefill worker at a mixed one.
- Every request's tokens and top-3 log-probabilities (greedy and sampled) equal `run` on the
  same prompts exactly; each sequence is admitted once per role, and the bytes read equal the
  latent formula (kv_lora_rank + qk_rope_head_dim per token and layer, bf16) times the
  prompt tokens.
- A decode worker killed after receiving pages, then a prefill worker killed while its pages
  are being read: every request completes elsewhere with the same tokens, and afterwards no
  worker holds a KV page (the workers' own count of held pages returns to zero).
- One mpirun starting both roles (MPMD: 1 prefill, 2 decode workers) forms a world per role,
  the decode workers' experts exchanged over MPI, with the same tokens again.
- A decode worker whose pages are laid out otherwise computes the sequences itself: the same
  tokens, no page read."""
import json
import os
import re
import signal
import subprocess
import tempfile
import urllib.request
from harness import ENV, MPIRUN, check, check_answers, daedalus, dump_logs, expect_error, failures, finish, free_port, lines, make_model, run, stop_cluster, wait_for

REQUESTS = 16
READ_DELAY_MS = 1500
LONG_NEW_TOKENS = 160


class Cluster:
    def __init__(self, d, model, tmp):
        self.d, self.model, self.tmp = d, model, tmp
        self.address = f"127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"
        self.log = open(os.path.join(tmp, "coordinator.log"), "a")
        self.coordinator = subprocess.Popen(
            [d, "coordinator", "--model", model, "--prefill-world-size", "2", "--decode-world-size", "2", "--listen",
             self.address, "--metrics-listen", self.metrics, "--heartbeat-interval", "0.3", "--heartbeat-timeout", "3"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=ENV)
        line = self.coordinator.stdout.readline()
        check(line.startswith("listening"), "the coordinator listens", line)
        self.workers = {}

    def start_worker(self, name, role, extra=(), env=None):
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        self.workers[name] = subprocess.Popen(
            [self.d, "worker", "--coordinator", self.address, "--model", self.model, "--transport", "ucx", "--threads", "1",
             "--kv-cache-tokens", "4096", "--page-size", "16", "--collective-timeout", "3", "--role", role, *extra],
            stdout=log, stderr=subprocess.STDOUT, env=dict(ENV, **(env or {})), start_new_session=True)

    def status(self):
        p = run([self.d, "status", "--server", self.address, "--json"], timeout=30)
        return json.loads(p.stdout) if p.returncode == 0 else {"state": "unreachable", "workers": [], "detail": p.stderr}

    def metric(self, name):
        text = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10).read().decode()
        return {m.group(1) or "": float(m.group(2)) for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)}

    def generate_bg(self, prompts):
        return subprocess.Popen([self.d, "generate", "--server", self.address, "--json", "--prompts", prompts,
                                 "--concurrency", str(REQUESTS), "--timeout", "240"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)

    def stop(self):
        stop_cluster(self.coordinator, self.workers.values())


def role_errors(d, model, tmp):
    expect_error(run([d, "serve", "--model", model, "--prefill-workers", "0", "--decode-workers", "2"]),
                 "a decode-only cluster", ["at least one prefill and one decode worker"])
    expect_error(run([d, "serve", "--model", model, "--workers", "2", "--prefill-workers", "2", "--decode-workers", "1"]),
                 "more roles than the world size", ["--prefill-workers 2 plus --decode-workers 1", "--workers 2"])
    expect_error(run([d, "coordinator", "--model", model, "--world-size", "2", "--prefill-world-size", "2",
                      "--decode-world-size", "1"]), "a coordinator given more roles than its world size",
                 ["--world-size 2"])
    expect_error(run([d, "coordinator", "--model", model, "--prefill-world-size", "0", "--decode-world-size", "2"]),
                 "a coordinator with decode workers only", ["at least one prefill and one decode worker"])
    # A worker whose role the coordinator does not serve is refused at registration.
    for coordinator_args, role, expect in (
            (["--prefill-world-size", "1", "--decode-world-size", "1"], "mixed", "--role prefill or --role decode"),
            (["--world-size", "1"], "prefill", "--prefill-world-size and --decode-world-size")):
        address = f"127.0.0.1:{free_port()}"
        c = subprocess.Popen([d, "coordinator", "--model", model, "--listen", address, *coordinator_args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        c.stdout.readline()
        w = run([d, "worker", "--coordinator", address, "--model", model, "--role", role, "--register-timeout", "20"], timeout=60)
        check(w.returncode != 0 and expect in w.stderr, f"a {role} worker at a coordinator run with {coordinator_args[0]} "
              "is refused, saying why", w.stderr[-400:])
        c.send_signal(signal.SIGTERM)
        c.wait(timeout=30)


def one_mpirun(d, model, prompts, reference):
    address = f"127.0.0.1:{free_port()}"
    c = subprocess.Popen([d, "coordinator", "--model", model, "--listen", address, "--prefill-world-size", "1",
                          "--decode-world-size", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    c.stdout.readline()
    worker = [d, "worker", "--coordinator", address, "--model", model, "--threads", "1", "--role"]
    job = subprocess.Popen([*MPIRUN, "--bind-to", "none", "-np", "1", *worker, "prefill", ":", "-np", "2", *worker, "decode"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        serving = wait_for(lambda: "cluster serving" in run([d, "status", "--server", address]).stdout, 60)
        check(serving, "one mpirun starting 1 prefill and 2 decode workers forms both groups")
        got = {r["id"]: (r["generated_ids"], r.get("logprobs"))
               for r in lines(run([d, "generate", "--server", address, "--json", "--prompts", prompts, "--concurrency", "8"],
                                  timeout=240).stdout)}
        check(got == reference, "one mpirun, a world per role: tokens and log-probabilities equal `run`",
              f"{sum(got.get(i) == r for i, r in reference.items())} of {len(reference)} equal")
    finally:
        c.send_signal(signal.SIGTERM)
        c.wait(timeout=30)
        try:
            job.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def mismatched_layouts(d, model, prompts, reference):
    """A decode worker whose pages are laid out otherwise (another --page-size) computes each
    sequence itself instead of reading the prefill worker's pages: the same tokens, and every
    read counted as failed."""
    address, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    c = subprocess.Popen([d, "coordinator", "--model", model, "--listen", address, "--metrics-listen", metrics,
                          "--prefill-world-size", "1", "--decode-world-size", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    c.stdout.readline()
    workers = [subprocess.Popen([d, "worker", "--coordinator", address, "--model", model, "--threads", "1", "--role", role,
                                 "--page-size", page], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                                start_new_session=True) for role, page in (("prefill", "16"), ("decode", "32"))]
    try:
        check(wait_for(lambda: "cluster serving" in run([d, "status", "--server", address]).stdout, 60),
              "prefill and decode workers with different page sizes serve")
        check_answers(subprocess.Popen([d, "generate", "--server", address, "--json", "--prompts", prompts, "--concurrency",
                                        "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV),
                      "pages laid out otherwise", reference)
        text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
        failed = re.search(r'^daedalus_kv_transfers_total\{result="failed"\} (\S+)$', text, re.M)
        check(failed and float(failed.group(1)) == len(reference) and "result=\"ok\"" not in text,
              "every read was refused for the layout, none attempted", failed and failed.group(0))
    finally:
        stop_cluster(c, workers)


def main():
    d = daedalus()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(d, tmp)
        config = json.load(open(os.path.join(model, "config.json")))
        role_errors(d, model, tmp)
        prompts = os.path.join(tmp, "prompts.jsonl")
        prompt_tokens = 0
        with open(prompts, "w") as f:
            for i in range(REQUESTS):
                n = 5 + 7 * i  # within a page, whole pages and a partial last page
                prompt_tokens += n
                r = {"id": f"r{i}", "prompt_ids": [(11 * i + 3 * k) % 500 + 1 for k in range(n)], "max_new_tokens": 48,
                     "ignore_eos": True, "logprobs": 3}
                if i % 2:
                    r.update(temperature=0.8, top_p=0.95, seed=500 + i)
                f.write(json.dumps(r) + "\n")
        reference = {r["id"]: (r["generated_ids"], r.get("logprobs"))
                     for r in lines(run([d, "run", "--model", model, "--prompts", prompts]).stdout)}
        check(len(reference) == REQUESTS, "run answers every prompt", len(reference))
        # The same prompts generating longer, for the decode worker killed mid-decode: both decode
        # workers then decode at once for over three times as many steps (48 steps, a window the
        # status polls missed once on a loaded machine), and 16 sequences still fit one worker's pool.
        long_prompts = os.path.join(tmp, "prompts_long.jsonl")
        with open(prompts) as src, open(long_prompts, "w") as dst:
            for line in src:
                dst.write(json.dumps(dict(json.loads(line), max_new_tokens=LONG_NEW_TOKENS)) + "\n")
        long_reference = {r["id"]: (r["generated_ids"], r.get("logprobs"))
                          for r in lines(run([d, "run", "--model", model, "--prompts", long_prompts]).stdout)}

        def nothing_held(cluster, what):
            held = wait_for(lambda: all(int(w.get("kv_held_tokens", 0)) == 0 and int(w.get("kv_used_tokens", 0)) == 0
                                        for w in cluster.status()["workers"]), 20)
            check(held, f"{what}: no worker holds a KV page afterwards", cluster.status()["workers"])

        one_mpirun(d, model, prompts, reference)
        mismatched_layouts(d, model, prompts, reference)
        cluster = Cluster(d, model, tmp)
        delay = {"DAEDALUS_FAULT_KV_READ_DELAY_MS": str(READ_DELAY_MS)}
        try:
            for name, role in (("prefill0", "prefill"), ("prefill1", "prefill"), ("decode0", "decode"), ("decode1", "decode")):
                cluster.start_worker(name, role, env=delay if role == "decode" else None)
            s = wait_for(lambda: cluster.status().get("state") == "serving" and cluster.status(), 120)
            roles = sorted((w.get("role"), int(w.get("rank", 0))) for w in (s or {}).get("workers", []))
            check(roles == [("decode", 0), ("decode", 1), ("prefill", 0), ("prefill", 1)],
                  "two prefill and two decode workers serve, each group numbered from 0", roles)

            check_answers(cluster.generate_bg(prompts), "disaggregated", reference)
            admitted = cluster.metric("daedalus_admissions_by_role_total")
            check(admitted == {'{role="decode"}': REQUESTS, '{role="prefill"}': REQUESTS},
                  "each sequence is admitted once to a prefill worker and once to a decode worker", admitted)
            row_bytes = (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * 2
            expect_bytes = prompt_tokens * config["num_hidden_layers"] * row_bytes
            moved = cluster.metric("daedalus_kv_transfer_bytes_total").get("")
            check(moved == expect_bytes, "the bytes read equal the latent formula times the prompt tokens",
                  f"{moved} read, {expect_bytes} expected")
            nothing_held(cluster, "disaggregated")

            # A decode worker killed while decoding sequences whose pages it had read.
            transfers = cluster.metric("daedalus_kv_transfers_total").get('{result="ok"}', 0)
            stream = cluster.generate_bg(long_prompts)
            check(wait_for(lambda: cluster.metric("daedalus_kv_transfers_total").get('{result="ok"}', 0) >= transfers + 4 and all(
                int(w.get("running", 0)) > 0 for w in cluster.status()["workers"] if w.get("role") == "decode"), 60, 0.05),
                  "both decode workers decode sequences whose pages they read")
            victim = next(int(w["pid"]) for w in cluster.status()["workers"] if w.get("role") == "decode" and int(w["rank"]) == 1)
            os.kill(victim, signal.SIGKILL)
            check_answers(stream, "a decode worker killed after receiving pages", long_reference)
            s = cluster.status()
            check(sorted(w.get("role") for w in s["workers"]) == ["decode", "prefill", "prefill"],
                  "the decode group serves on with one worker", [w.get("role") for w in s["workers"]])
            nothing_held(cluster, "decode worker killed")

            # A prefill worker killed while a decode worker waits to read its pages: the read
            # fails and the decode worker computes the sequence itself.
            stream = cluster.generate_bg(prompts)
            admitted = cluster.metric("daedalus_admissions_by_role_total").get('{role="decode"}', 0)
            check(wait_for(lambda: cluster.metric("daedalus_admissions_by_role_total").get('{role="decode"}', 0) >= admitted + 2,
                           60, 0.02), "sequences reach the decode worker, their reads pending")
            victim = next(int(w["pid"]) for w in cluster.status()["workers"] if w.get("role") == "prefill" and int(w["rank"]) == 0)
            os.kill(victim, signal.SIGKILL)
            check_answers(stream, "a prefill worker killed mid-transfer", reference)
            failed = cluster.metric("daedalus_kv_transfers_total").get('{result="failed"}', 0)
            check(failed > 0, "reads from the killed prefill worker failed, and their sequences were computed again", failed)
            nothing_held(cluster, "prefill worker killed")
        finally:
            try:
                cluster.stop()
            finally:  # the logs even when stopping fails
                if failures:
                    dump_logs(tmp, ["coordinator.log", "prefill0.log", "prefill1.log", "decode0.log", "decode1.log"], 1500)
    finish()


if __name__ == "__main__":
    main()
