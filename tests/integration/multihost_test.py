"""A cluster across separate network hosts: the test makes its own hosts as Linux network
namespaces joined by veth pairs to a bridge namespace (a private /24 that exists only inside
them), runs the coordinator in one and a worker in each of three others with the UCX
transport over TCP (no MPI, no shared memory between workers), and checks the tokens against
the single-process run. Then it cuts one worker's link mid-generation: every open stream ends
UNAVAILABLE naming the unreachable rank, the other workers report the peer they lost, and after
the link returns and the workers restart, requests succeed again.

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
        expected = {json.loads(l)["id"]: json.loads(l) for l in
                    subprocess.run([d, "run", "--model", model, "--prompts", prompts], capture_output=True, text=True,
                                   env=ENV, check=True).stdout.splitlines()}
        server = f"{SUBNET}.1:{PORT}"

        def start_workers(tag):
            out = []
            for rank in range(3):
                log = open(os.path.join(tmp, f"worker{rank}-{tag}.log"), "w")
                env = dict(ENV, UCX_TLS="tcp", UCX_NET_DEVICES="eth0")
                out.append(subprocess.Popen(
                    ["ip", "netns", "exec", HOSTS[rank + 1], d, "worker", "--transport", "ucx", "--rank", str(rank),
                     "--world-size", "3", "--coordinator", server, "--model", model, "--threads", "1",
                     "--kv-cache-tokens", "8192", "--collective-timeout", "5"], stdout=log, stderr=subprocess.STDOUT, env=env))
            procs.extend(out)
            return out

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
            workers = start_workers("a")
            s = wait_state("serving", 120)
            hosts = {w["host"] for w in s.get("workers", [])}
            check(s["state"] == "serving", "3 workers in 3 namespaces register over the bridge", s.get("detail"))
            p = client("generate", "--server", server, "--prompts", prompts, "--concurrency", "9", "--json")
            got = {json.loads(l)["id"]: json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")}
            same = p.returncode == 0 and all(got[i]["generated_ids"] == expected[i]["generated_ids"] for i in expected)
            check(same, "across hosts, over UCX/TCP: the single-process tokens", p.stderr[-300:])

            # Partition: cut rank 1's link while three long generations run.
            streams = [subprocess.Popen(["ip", "netns", "exec", HOSTS[0], d, "generate", "--server", server, "--prompt-ids",
                                         "1,2,3", "--max-new-tokens", "4000", "--ignore-eos", "--json"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(3)]
            until = time.time() + 30
            while time.time() < until and sum(int(w["running"]) for w in status().get("workers", [])) < 3:
                time.sleep(0.1)
            cut = time.time()
            sh("ip", "link", "set", "eth0", "down", ns=HOSTS[2])
            bound = 3 + 1 + 5  # heartbeat timeout + its check interval + slack
            ends = []
            for proc in streams:
                try:
                    out, _ = proc.communicate(timeout=max(0.1, cut + bound - time.time()))
                    ends.append((round(time.time() - cut, 1), json.loads(out.splitlines()[-1]) if out.strip() else {}))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    ends.append((None, {}))
            ok = all(t is not None and r.get("error", {}).get("code") == "UNAVAILABLE" for t, r in ends)
            check(ok, f"link of rank 1 cut: every open stream ends UNAVAILABLE within {bound} s "
                      f"(after {', '.join(str(t) for t, _ in ends)} s)", ends)
            check(all("rank 1" in r.get("error", {}).get("message", "") for _, r in ends),
                  "the error names the unreachable rank", [r.get("error") for _, r in ends])
            print("     e.g. " + ends[0][1].get("error", {}).get("message", "")[:200])
            # The workers on the other side say which peer they lost, then exit.
            for rank in (0, 2):
                try:
                    workers[rank].wait(timeout=20)
                except subprocess.TimeoutExpired:
                    workers[rank].kill()
            logs = [open(os.path.join(tmp, f"worker{r}-a.log")).read() for r in (0, 2)]
            # A rank may wait on several peers at once: rank 0 can be a step ahead, in the
            # all-reduce, while rank 2 still waits for rank 1 in the all-to-all ("waiting for
            # ranks 1, 2"). Rank 1 must be among those named.
            names_rank_1 = re.compile(r"waiting for ranks? (\d+, )*1\b|lost the connection to rank 1\b|worker rank 1\b")
            check(all(names_rank_1.search(l) for l in logs),
                  "ranks 0 and 2 report rank 1 as the peer they lost instead of hanging", [l[-300:] for l in logs])
            for l in logs:
                print("     " + (l.strip().splitlines() or [""])[-1][:200])

            sh("ip", "link", "set", "eth0", "up", ns=HOSTS[2])
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
            start_workers("b")
            s = wait_state("serving", 120)
            check(s["state"] == "serving", "link back, workers restarted: they re-register and the cluster serves", s.get("detail"))
            p = client("generate", "--server", server, "--prompts", prompts, "--concurrency", "9", "--json")
            got = {json.loads(l)["id"]: json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")}
            check(p.returncode == 0 and all(got[i]["generated_ids"] == expected[i]["generated_ids"] for i in expected),
                  "after the partition: the single-process tokens again")
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
