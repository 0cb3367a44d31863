"""scripts/launch/mpirun.sh with a one-host hostfile: the coordinator and 2 workers come up on
loopback, answer like `run`, and SIGTERM stops all of them."""
import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from harness import ENV, check, dump_logs, failures, finish, free_port


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
        port = free_port()
        env = dict(ENV, DAEDALUS_BIN=d, DAEDALUS_HOST="127.0.0.1", DAEDALUS_PORT=str(port),
                   DAEDALUS_METRICS_PORT=str(free_port()), DAEDALUS_CLUSTER_SECRET="s3cret",
                   MPIRUN_ARGS="--oversubscribe")
        log = open(os.path.join(tmp, "launch.log"), "w")
        launch = subprocess.Popen(["bash", script, hostfile, model, "--threads", "1"], stdout=log, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True)
        server = f"127.0.0.1:{port}"
        try:
            until, state = time.time() + 120, None
            while time.time() < until:
                p = subprocess.run([d, "status", "--server", server, "--json"], capture_output=True, text=True, env=ENV)
                if p.returncode == 0:
                    state = json.loads(p.stdout)
                    if state["state"] == "serving":
                        break
                time.sleep(0.3)
            check(state is not None and state["state"] == "serving" and len(state["workers"]) == 2,
                  "mpirun.sh: the coordinator and 2 workers from the hostfile serve")
            ref = subprocess.run([d, "run", "--model", model, "--prompt-ids", "3,1,4,1,5", "--max-new-tokens", "8"],
                                 capture_output=True, text=True, env=ENV).stdout
            p = subprocess.run([d, "generate", "--server", server, "--prompt-ids", "3,1,4,1,5", "--max-new-tokens", "8", "--json"],
                               capture_output=True, text=True, env=ENV)
            check(p.returncode == 0 and json.loads(p.stdout)["generated_ids"] == json.loads(ref)["generated_ids"],
                  "the launched cluster answers like run", p.stdout + p.stderr)
            os.kill(launch.pid, signal.SIGTERM)
            rc = launch.wait(timeout=60)
            check(rc == 0, "SIGTERM stops the launcher", rc)
            time.sleep(0.5)
            left = subprocess.run(["pgrep", "-f", f"--coordinator 127.0.0.1:{port}"], capture_output=True, text=True).stdout.split()
            check(not left, "no worker is left running", left)
        finally:
            if launch.poll() is None:
                os.killpg(launch.pid, signal.SIGKILL)
            if failures:
                dump_logs(tmp, ["launch.log"])
    finish()


if __name__ == "__main__":
    main()
