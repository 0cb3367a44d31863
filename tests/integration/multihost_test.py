"""A cluster across separate network hosts: the test makes its own hosts as Linux network
namespaces joined by veth pairs to a bridge namespace (a private /24 that exists only inside
them), runs the coordinator in one and a worker in each of three others with the UCX
transport over TCP (no MPI, no shared memory between workers), and checks the tokens against
the single-process run. The cluster is elastic (ucx): under load, it cuts one worker's link —
no request fails and every one gets the single-process tokens, the other two serve on, the cut
one reports the peers it lost — then, with the link back, a worker started again in that host
joins the running cluster; last, a worker killed in its host under load costs no request either.

Safety: every packet stays inside the namespaces made here — clients run inside the
coordinator's namespace, nothing in the root namespace addresses them — and the namespaces are
deleted at the end, also on failure. Without root (or without `ip netns`), the test skips."""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from harness import ENV, check, dump_logs, failures, finish

TAG = f"dd{os.getpid() % 100000}"
BRIDGE = f"{TAG}br"
HOSTS = [f"{TAG}h{i}" for i in range(4)]  # h0: coordinator; h1..h3: workers
SUBNET = "10.213.7"
PORT = 50051


def sh(*cmd, ns=None, check_rc=True):
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    p = subprocess.run(full, capture_output=True, text=True)
    if check_rc and p.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {p.stderr.strip()}")
    return p


def make_hosts():
    for ns in [BRIDGE] + HOSTS:
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", "br0", "type", "bridge", ns=BRIDGE)
    sh("ip", "link", "set", "br0", "up", ns=BRIDGE)
    for i, ns in enumerate(HOSTS):
        # Both ends are created inside their namespaces: nothing appears in the root namespace.
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i}", "netns", BRIDGE)
        sh("ip", "link", "set", f"p{i}", "master", "br0", ns=BRIDGE)
        sh("ip", "link", "set", f"p{i}", "up", ns=BRIDGE)
        sh("ip", "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)


def delete_hosts():
    for ns in HOSTS + [BRIDGE]:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daedalus", required=True)
    d = parser.parse_args().daedalus
    if os.geteuid() != 0:
        print("skipped: creating network namespaces needs root")
        sys.exit(77)
    probe = subprocess.run(["ip", "netns", "add", f"{TAG}probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"skipped: cannot create network namespaces here ({probe.stderr.strip()})")
        sys.exit(77)
    subprocess.run(["ip", "netns", "del", f"{TAG}probe"], capture_output=True)

    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "tiny")
        subprocess.run([d, "make-model", "--preset", "tiny", "--out", model], check=True, capture_output=True)
        prompts = os.path.join(tmp, "prompts.jsonl")
        with open(prompts, "w") as f:
            for i in range(9):
                f.write(json.dumps({"id": f"r{i}", "prompt_ids": [(i * 31 + j * 7) % 512 for j in range(3 + 4 * i)],
                                    "max_new_tokens": 5 + i}) + "\n")
        long_prompts = os.path.join(tmp, "long.jsonl")
        with open(long_prompts, "w") as f:
            for i in range(6):
                r = {"id": f"l{i}", "prompt_ids": [(i * 17 + j * 5) % 512 + 1 for j in range(6 + i)], "max_new_tokens": 400,
                     "ignore_eos": True}
                if i % 2:
                    r.update(temperature=0.8, seed=50 + i)
                f.write(json.dumps(r) + "\n")

        def reference(path):
            return {json.loads(l)["id"]: json.loads(l) for l in
                    subprocess.run([d, "run", "--model", model, "--prompts", path], capture_output=True, text=True,
                                   env=ENV, check=True).stdout.splitlines()}
        expected, long_expected = reference(prompts), reference(long_prompts)
        server = f"{SUBNET}.1:{PORT}"

        def start_worker(rank, tag):
            log = open(os.path.join(tmp, f"worker{rank}-{tag}.log"), "w")
            env = dict(ENV, UCX_TLS="tcp", UCX_NET_DEVICES="eth0")
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", HOSTS[rank + 1], d, "worker", "--transport", "ucx", "--rank", str(rank),
                 "--world-size", "3", "--coordinator", server, "--model", model, "--threads", "1",
                 "--kv-cache-tokens", "8192", "--collective-timeout", "5"], stdout=log, stderr=subprocess.STDOUT, env=env))
            return procs[-1]

        def client(*args, timeout=120):
            return subprocess.run(["ip", "netns", "exec", HOSTS[0], d, *args], capture_output=True, text=True, env=ENV,
                                  timeout=timeout)

        def status():
            p = client("status", "--server", server, "--json", timeout=30)
            return json.loads(p.stdout) if p.returncode == 0 else {"state": "unreachable", "detail": p.stderr}

        def wait_state(state, seconds):
            until = time.time() + seconds
            while time.time() < until:
                s = status()
                if s.get("state") == state:
                    return s
                time.sleep(0.3)
            return status()

        try:
            make_hosts()
            coordinator = subprocess.Popen(
                ["ip", "netns", "exec", HOSTS[0], d, "coordinator", "--model", model, "--world-size", "3",
                 "--listen", f"{SUBNET}.1:{PORT}", "--heartbeat-timeout", "3"],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "coordinator.log"), "w"), env=ENV)
            procs.append(coordinator)
            workers = [start_worker(rank, "a") for rank in range(3)]
            s = wait_state("serving", 120)
            check(s["state"] == "serving", "3 workers in 3 namespaces register over the bridge", s.get("detail"))
            p = client("generate", "--server", server, "--prompts", prompts, "--concurrency", "9", "--json")
            got = {json.loads(l)["id"]: json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")}
            same = p.returncode == 0 and all(got[i]["generated_ids"] == expected[i]["generated_ids"] for i in expected)
            check(same, "across hosts, over UCX/TCP: the single-process tokens", p.stderr[-300:])

            def under_load(fault, what):
                """Runs the long prompts 6 at a time; once every worker runs some, calls fault().
                Every request must succeed with the single-process tokens: the cluster is elastic."""
                gen = subprocess.Popen(["ip", "netns", "exec", HOSTS[0], d, "generate", "--server", server, "--prompts",
                                        long_prompts, "--concurrency", "6", "--json", "--timeout", "300"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
                until = time.time() + 60
                while time.time() < until and not all(int(w["running"]) > 0 for w in status().get("workers", [{}])):
                    time.sleep(0.05)
                started = time.time()
                fault()
                out, err = gen.communicate(timeout=300)
                got = {json.loads(l)["id"]: json.loads(l) for l in out.splitlines() if l.startswith("{")}
                errors = [r.get("error") for r in got.values() if "error" in r]
                check(gen.returncode == 0 and not errors and len(got) == len(long_expected),
                      f"{what}: no request fails ({len(got)} answered)", (errors[:2], err[-300:]))
                check(all(got.get(i, {}).get("generated_ids") == r["generated_ids"] for i, r in long_expected.items()),
                      f"{what}: every request's tokens equal the single-process run")
                return started

            # Partition: cut rank 1's link under load. The coordinator stops hearing from it,
            # ranks 0 and 2 serve on as a world of two, and its sequences continue there.
            def cut():
                sh("ip", "link", "set", "eth0", "down", ns=HOSTS[2])
            cut_at = under_load(cut, "link of rank 1 cut")
            s = wait_state("serving", 30)
            check(s["state"] == "serving" and len(s.get("workers", [])) == 2 and int(s.get("generation", 0)) == 2,
                  "the other two serve on as generation 2", (s.get("state"), len(s.get("workers", [])), s.get("generation")))
            coordinator_log = open(os.path.join(tmp, "coordinator.log")).read()
            check(re.search(r"worker rank 1 \(.*\) lost: no heartbeat for \d+ ms", coordinator_log),
                  "the coordinator names rank 1, silent, as lost", coordinator_log[-400:])
            print(f"measured: link cut to the end of the load: {time.time() - cut_at:.1f} s", flush=True)
            logs = [open(os.path.join(tmp, f"worker{r}-a.log")).read() for r in (0, 2)]
            check(all(re.search(r"re-formed as rank [01] of 2 \(generation 2: worker rank 1 ", l) for l in logs),
                  "ranks 0 and 2 re-form around rank 1 instead of failing", [l[-300:] for l in logs])
            # Rank 1, alone behind its cut link, gives up naming the peers it lost.
            try:
                workers[1].wait(timeout=40)
            except subprocess.TimeoutExpired:
                workers[1].kill()
            log1 = open(os.path.join(tmp, "worker1-a.log")).read()
            check(re.search(r"waiting for ranks? (\d+, )*[02]\b", log1), "rank 1 reports the peers it lost, and exits",
                  log1[-300:])

            # The link returns; a worker started again in rank 1's host joins the running cluster.
            sh("ip", "link", "set", "eth0", "up", ns=HOSTS[2])
            workers[1] = start_worker(1, "b")
            until = time.time() + 60
            while time.time() < until and len(status().get("workers", [])) < 3:
                time.sleep(0.3)
            s = status()
            check(s.get("state") == "serving" and len(s.get("workers", [])) == 3 and int(s.get("generation", 0)) == 3,
                  "link back: a worker restarted in rank 1's host joins as the third", (s.get("state"), s.get("generation")))

            # A worker killed in its host under load.
            victim = next(int(w["pid"]) for w in s["workers"] if w["rank"] == 0)
            def kill():
                subprocess.run(["ip", "netns", "exec", HOSTS[1], "kill", "-9", str(victim)], check=True)
            under_load(kill, "a worker killed in its host")
            s = wait_state("serving", 30)
            check(len(s.get("workers", [])) == 2 and victim not in [int(w["pid"]) for w in s.get("workers", [])],
                  "the other two serve on", s.get("workers"))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            # `ip netns exec` children may outlive their wrapper: end everything left in our hosts.
            for ns in HOSTS:
                for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                    subprocess.run(["kill", "-9", pid], capture_output=True)
            delete_hosts()
            if failures:
                dump_logs(tmp, sorted(n for n in os.listdir(tmp) if n.endswith(".log")))
    left = [ns for ns in HOSTS + [BRIDGE] if ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout]
    check(not left, "the namespaces are gone", left)
    finish()


if __name__ == "__main__":
    main()
