"""scripts/launch/mpirun.sh with a one-host hostfile: the coordinator and 2 workers come up on
loopback, answer like `run`, and SIGTERM stops all of them. Then with `--transport ucx`
(elastic): a worker killed by SIGKILL leaves the other serving, the script starts it again, and
it joins the running cluster as the second worker."""
import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from harness import ENV, check, dump_logs, failures, finish, free_port, wait_for


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daedalus", required=True)
    d = parser.parse_args().daedalus
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "launch", "mpirun.sh")
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "tiny")
        subprocess.run([d, "make-model", "--preset", "tiny", "--out", model], check=True, capture_output=True)
        hostfile = os.path.join(tmp, "hosts")
        with open(hostfile, "w") as f:
            f.write("localhost slots=2\n")
        ref = json.loads(subprocess.run([d, "run", "--model", model, "--prompt-ids", "3,1,4,1,5", "--max-new-tokens", "8"],
                                        capture_output=True, text=True, env=ENV).stdout)["generated_ids"]
        for mode, flags in (("mpi", []), ("ucx", ["--transport", "ucx"])):
            port = free_port()
            server = f"127.0.0.1:{port}"
            env = dict(ENV, DAEDALUS_BIN=d, DAEDALUS_HOST="127.0.0.1", DAEDALUS_PORT=str(port),
                       DAEDALUS_METRICS_PORT=str(free_port()), DAEDALUS_CLUSTER_SECRET="s3cret",
                       MPIRUN_ARGS="--oversubscribe")
            log = open(os.path.join(tmp, f"launch-{mode}.log"), "w")
            launch = subprocess.Popen(["bash", script, hostfile, model, "--threads", "1"] + flags, stdout=log,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True)

            def status():
                p = subprocess.run([d, "status", "--server", server, "--json"], capture_output=True, text=True, env=ENV)
                return json.loads(p.stdout) if p.returncode == 0 else {"state": "unreachable", "workers": []}

            def answers_like_run(what):
                p = subprocess.run([d, "generate", "--server", server, "--prompt-ids", "3,1,4,1,5", "--max-new-tokens", "8",
                                    "--json"], capture_output=True, text=True, env=ENV)
                check(p.returncode == 0 and json.loads(p.stdout)["generated_ids"] == ref, what, p.stdout + p.stderr)

            try:
                state = wait_for(lambda: status()["state"] == "serving" and len(status()["workers"]) == 2 and status(), 120)
                check(bool(state), f"{mode}: mpirun.sh: the coordinator and 2 workers from the hostfile serve")
                answers_like_run(f"{mode}: the launched cluster answers like run")
                if mode == "ucx" and state:
                    victim = int(state["workers"][1]["pid"])
                    os.kill(victim, signal.SIGKILL)
                    s = wait_for(lambda: len(status()["workers"]) == 1 and status(), 30, 0.1)
                    check(bool(s) and s["state"] == "serving", "ucx: a worker killed, the other serves on alone")
                    answers_like_run("ucx: one worker answers like run")
                    s = wait_for(lambda: len(status()["workers"]) == 2 and status(), 60)
                    check(bool(s) and int(s["generation"]) == int(state["generation"]) + 2 and
                          victim not in [int(w["pid"]) for w in s["workers"]],
                          "ucx: the script starts it again and it joins the running cluster", s)
                    answers_like_run("ucx: after the join, like run")
                os.kill(launch.pid, signal.SIGTERM)
                rc = launch.wait(timeout=60)
                check(rc == 0, f"{mode}: SIGTERM stops the launcher", rc)
                time.sleep(0.5)
                left = subprocess.run(["pgrep", "-f", f"--coordinator 127.0.0.1:{port}"], capture_output=True,
                                      text=True).stdout.split()
                check(not left, f"{mode}: no worker is left running", left)
            finally:
                if launch.poll() is None:
                    os.killpg(launch.pid, signal.SIGKILL)
        if failures:
            dump_logs(tmp, ["launch-mpi.log", "launch-ucx.log"])
    finish()


if __name__ == "__main__":
    main()
