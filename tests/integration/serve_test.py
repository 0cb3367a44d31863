"""`daedalus serve`: a local cluster on the generated tiny model, over TLS. It prints
"ready <address>", answers like `run`, refuses plaintext, starts its workers again after one is
killed, and shuts down cleanly on SIGTERM leaving no worker behind."""
import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from harness import ENV, check, dump_logs, failures, finish, lines, run


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daedalus", required=True)
    d = parser.parse_args().daedalus
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        p = run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
                 "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        check(p.returncode == 0, "a self-signed certificate for 127.0.0.1", p.stderr[-200:])
        model = os.path.join(tmp, "tiny")
        run([d, "make-model", "--preset", "tiny", "--out", model])
        reference = lines(run([d, "run", "--model", model, "--prompt-ids", "9,8,7,6", "--max-new-tokens", "12"]).stdout)[0]

        log = open(os.path.join(tmp, "serve.log"), "w")
        serve = subprocess.Popen([d, "serve", "--workers", "2", "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key],
                                 stdout=subprocess.PIPE, stderr=log, text=True, env=ENV)
        try:
            line = serve.stdout.readline()
            check(line.startswith("ready 127.0.0.1:"), "serve prints ready <address>", line)
            address = line.split()[1]
            tls = ["--server", address, "--tls-ca", cert]
            p = run([d, "generate"] + tls + ["--prompt-ids", "9,8,7,6", "--max-new-tokens", "12", "--json"])
            got = lines(p.stdout)
            check(p.returncode == 0 and got[0]["generated_ids"] == reference["generated_ids"],
                  "over TLS, on the generated tiny model: the tokens of `run`", p.stdout + p.stderr)
            p = run([d, "generate", "--server", address, "--prompt-ids", "1,2", "--json", "--timeout", "5"])
            got = lines(p.stdout)
            check(p.returncode != 0 and got and got[0]["error"]["code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED"),
                  "a plaintext client cannot talk to the TLS port", p.stdout)

            status = json.loads(run([d, "status", "--json"] + tls).stdout)
            pids = [int(w["pid"]) for w in status["workers"]]
            os.kill(pids[0], signal.SIGKILL)
            until, state = time.time() + 120, ""
            time.sleep(1)
            while time.time() < until:
                s = run([d, "status", "--json"] + tls)
                if s.returncode == 0:
                    st = json.loads(s.stdout)
                    state = st["state"]
                    if state == "serving" and all(int(w["pid"]) not in pids for w in st["workers"]):
                        break
                time.sleep(0.5)
            check(state == "serving", "after a worker is killed, serve starts the workers again and serves", state)
            p = run([d, "generate"] + tls + ["--prompt-ids", "9,8,7,6", "--max-new-tokens", "12", "--json"])
            got = lines(p.stdout)
            check(p.returncode == 0 and got[0]["generated_ids"] == reference["generated_ids"], "the relaunched workers answer the same")
            new_pids = [int(w["pid"]) for w in json.loads(run([d, "status", "--json"] + tls).stdout)["workers"]]

            serve.send_signal(signal.SIGTERM)
            rc = serve.wait(timeout=30)
            check(rc == 0, "SIGTERM stops serve cleanly", rc)
            time.sleep(0.5)
            check(not any(alive(p) for p in new_pids), "no worker outlives serve")
        finally:
            if serve.poll() is None:
                serve.kill()
            if failures:
                dump_logs(tmp, ["serve.log"])

        # The UCX data plane in one command: the same tokens.
        log = open(os.path.join(tmp, "serve-ucx.log"), "w")
        serve = subprocess.Popen([d, "serve", "--model", model, "--workers", "2", "--transport", "ucx",
                                  "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=log, text=True, env=ENV)
        try:
            line = serve.stdout.readline()
            check(line.startswith("ready 127.0.0.1:"), "serve --transport ucx prints ready <address>", line)
            address = line.split()[1] if line.startswith("ready") else ""
            p = run([d, "generate", "--server", address, "--prompt-ids", "9,8,7,6", "--max-new-tokens", "12", "--json"])
            got = lines(p.stdout)
            check(p.returncode == 0 and got and got[0]["generated_ids"] == reference["generated_ids"],
                  "serve --transport ucx: the tokens of `run`", p.stdout + p.stderr)
            serve.send_signal(signal.SIGTERM)
            check(serve.wait(timeout=30) == 0, "SIGTERM stops serve --transport ucx cleanly")
        finally:
            if serve.poll() is None:
                serve.kill()
            if failures:
                dump_logs(tmp, ["serve-ucx.log"])
    finish()


if __name__ == "__main__":
    main()
