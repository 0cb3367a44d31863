"""scripts/slurm/daedalus.sbatch against a real Slurm on this machine: the test starts munge
with its own key, slurmctld and slurmd with a configuration in a temporary folder (SLURM_CONF,
MpiDefault=pmix, a partition of this machine's CPUs), submits the script with sbatch, waits for
its "ready", checks the answers against `daedalus run`, cancels the job with scancel (which
must leave no worker behind) and stops the daemons by their process ids. Then the same with
`--transport ucx` (elastic): a worker killed by SIGKILL leaves the other serving, and a new step
starts it again into the running cluster. Skips, saying why, without root or without the Slurm
and munge daemons."""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from harness import ENV, check, dump_logs, failures, finish, free_port, wait_for


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daedalus", required=True)
    d = os.path.abspath(parser.parse_args().daedalus)
    missing = [p for p in ["munged", "slurmctld", "slurmd", "sbatch", "scancel", "squeue"]
               if shutil.which(p) is None and not os.path.exists(f"/usr/sbin/{p}")]
    if os.geteuid() != 0 or missing:
        print(f"skipped: needs root and the Slurm daemons ({'missing ' + ', '.join(missing) if missing else 'not root'})")
        sys.exit(77)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "slurm", "daedalus.sbatch")
    daemons = {}
    with tempfile.TemporaryDirectory(prefix="slurm-") as tmp:
        os.chmod(tmp, 0o700)
        os.makedirs(os.path.join(tmp, "state"))
        os.makedirs(os.path.join(tmp, "spool"))
        key = os.path.join(tmp, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        host = socket.gethostname().split(".")[0]
        conf = os.path.join(tmp, "slurm.conf")
        with open(conf, "w") as f:
            f.write(f"""ClusterName=daedalus-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={tmp}/munge.sock
CredType=cred/munge
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdLogFile={tmp}/slurmd.log
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
""")
        env = dict(ENV, SLURM_CONF=conf)
        try:
            subprocess.run(["munged", f"--key-file={key}", f"--socket={tmp}/munge.sock", f"--pid-file={tmp}/munged.pid",
                            f"--log-file={tmp}/munged.log", f"--seed-file={tmp}/munge.seed", "--force"], check=True,
                           capture_output=True)
            daemons["munged"] = int(wait_for(lambda: os.path.exists(f"{tmp}/munged.pid") and open(f"{tmp}/munged.pid").read().strip(), 10))
            daemons["slurmctld"] = subprocess.Popen(["slurmctld", "-D", "-f", conf], stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL, env=env).pid
            daemons["slurmd"] = subprocess.Popen(["slurmd", "-D", "-f", conf, "-N", host], stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL, env=env).pid
            idle = wait_for(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                                             env=env).stdout, 60)
            check(bool(idle), "munge, slurmctld and slurmd up; the node is idle")

            model = os.path.join(tmp, "tiny")
            subprocess.run([d, "make-model", "--preset", "tiny", "--out", model], check=True, capture_output=True)
            expected = json.loads(subprocess.run([d, "run", "--model", model, "--prompt-ids", "4,8,15,16,23,42",
                                                  "--max-new-tokens", "10"], capture_output=True, text=True, env=ENV).stdout)
            for mode, worker_args in (("srun", "--threads 1"), ("ucx", "--threads 1 --transport ucx")):
                port = free_port()
                out = os.path.join(tmp, f"job-{mode}.out")
                job_env = dict(env, DAEDALUS_MODEL=model, DAEDALUS_BIN=d, DAEDALUS_PORT=str(port),
                               DAEDALUS_METRICS_PORT=str(free_port()), DAEDALUS_WORKER_ARGS=worker_args)
                p = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", f"--output={out}", script],
                                   capture_output=True, text=True, env=job_env)
                check(p.returncode == 0, f"{mode}: sbatch accepts scripts/slurm/daedalus.sbatch", p.stderr)
                job = p.stdout.strip().split(";")[0]
                ready = wait_for(lambda: os.path.exists(out) and any(l.startswith("ready ") for l in open(out)), 120)
                check(bool(ready), f"{mode}: the job prints ready <host:port>",
                      open(out).read()[-500:] if os.path.exists(out) else "no output")
                server = f"127.0.0.1:{port}"

                def status():
                    p = subprocess.run([d, "status", "--server", server, "--json"], capture_output=True, text=True, env=ENV)
                    return json.loads(p.stdout) if p.returncode == 0 else {}

                def answers_like_run(what):
                    g = subprocess.run([d, "generate", "--server", server, "--prompt-ids", "4,8,15,16,23,42",
                                        "--max-new-tokens", "10", "--json"], capture_output=True, text=True, env=ENV)
                    got = json.loads(g.stdout) if g.returncode == 0 else {}
                    check(got.get("generated_ids") == expected["generated_ids"], what, g.stdout + g.stderr)

                first = wait_for(lambda: len(status().get("workers", [])) == 2 and status().get("state") == "serving" and status(), 60)
                check(bool(first), f"{mode}: the coordinator on the first node serves with 2 workers from srun",
                      status().get("detail"))
                answers_like_run(f"{mode}: the Slurm cluster answers like `run`")
                worker_pids = [int(w["pid"]) for w in (first or {}).get("workers", [])]
                if mode == "ucx" and first:
                    os.kill(worker_pids[1], signal.SIGKILL)
                    alone = wait_for(lambda: len(status().get("workers", [])) == 1 and status(), 30, 0.1)
                    check(bool(alone) and alone["state"] == "serving", "ucx: a worker killed, the other serves on alone")
                    again = wait_for(lambda: len(status().get("workers", [])) == 2 and status(), 90)
                    check(bool(again) and int(again["generation"]) == int(first["generation"]) + 2,
                          "ucx: a new step starts it again and it joins the running cluster", again)
                    answers_like_run("ucx: after the join, like `run`")
                    worker_pids += [int(w["pid"]) for w in (again or {}).get("workers", [])]
                subprocess.run(["scancel", job], env=env)
                gone = wait_for(lambda: job not in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                                                                 env=env).stdout, 60)
                check(bool(gone), f"{mode}: scancel ends the job")
                time.sleep(1)
                alive = [p for p in worker_pids if os.path.exists(f"/proc/{p}")]
                check(not alive, f"{mode}: no worker outlives the job", alive)
        finally:
            for name in ["slurmd", "slurmctld", "munged"]:
                if name in daemons:
                    try:
                        os.kill(daemons[name], signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            for name in ["slurmd", "slurmctld", "munged"]:
                if name in daemons:
                    wait_for(lambda: not os.path.exists(f"/proc/{daemons[name]}"), 10, 0.1)
            if failures:
                dump_logs(tmp, ["job-srun.out", "job-ucx.out", "slurmctld.log", "slurmd.log"])
    finish()


if __name__ == "__main__":
    main()
