"""The shipped Grafana dashboard (cluster-configs/grafana/daedalus.json) against a running
cluster: `serve --workers 2` on the tiny preset serves a few requests, and every metric any panel
or variable queries must be in the coordinator's /metrics (with the labels the panels group
by); the dashboard itself must be well-formed (unique panel ids, a query in every target, panels
within Grafana's 24-column grid)."""
import argparse
import json
import os
import re
import subprocess
import tempfile
import urllib.request
from harness import ENV, check, dump_logs, failures, finish, stop

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "..", "cluster-configs", "grafana", "daedalus.json")


def queries(dashboard):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target.get("expr", "")
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            yield f"variable ${var['name']}", var["query"]["query"] if isinstance(var["query"], dict) else var["query"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daedalus", required=True)
    d = parser.parse_args().daedalus
    dashboard = json.load(open(DASHBOARD))
    ids = [p["id"] for p in dashboard["panels"]]
    check(len(ids) == len(set(ids)), "panel ids are unique", ids)
    check(all(p.get("targets") and all(t.get("expr") and t.get("refId") for t in p["targets"]) for p in dashboard["panels"]),
          "every panel has targets, each with a query and a refId")
    check(all(0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dashboard["panels"]),
          "panels fit the 24-column grid")
    kinds = {p["type"] for p in dashboard["panels"]}
    check({"timeseries", "stat", "heatmap"} <= kinds, "time series, stats and the expert-load heatmap", kinds)

    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "tiny")
        subprocess.run([d, "make-model", "--preset", "tiny", "--out", model], check=True, capture_output=True)
        err = open(os.path.join(tmp, "serve.err"), "w+")
        serve = subprocess.Popen([d, "serve", "--model", model, "--workers", "2", "--listen", "127.0.0.1:0",
                                  "--metrics-listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=err, text=True, env=ENV)
        try:
            address = serve.stdout.readline().split()[1]
            err.seek(0)
            metrics_url = re.search(r"metrics at (http://\S+/metrics)", err.read()).group(1)
            for i in range(3):  # the same prompt again: the prefix cache gets hits
                p = subprocess.run([d, "generate", "--server", address, "--prompt-ids", ",".join(str(t % 500) for t in range(70)),
                                    "--max-new-tokens", "4", "--json"], capture_output=True, text=True, env=ENV, timeout=60)
                check(p.returncode == 0, f"request {i} served", p.stderr[-300:])
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, whatever the environment says
            text = opener.open(metrics_url, timeout=10).read().decode()
            series = [line for line in text.splitlines() if line and not line.startswith("#")]
            for where, expr in queries(dashboard):
                names = set(re.findall(r"\bdaedalus_[a-z_]+", expr))
                check(bool(names), f"{where}: queries a daedalus metric", expr)
                for name in sorted(names):
                    present = [s for s in series if s.startswith(name + "{") or s.startswith(name + " ")]
                    check(bool(present), f"{where}: {name} is in /metrics")
                    # Labels the query groups by or selects on are on the series.
                    for label in re.findall(r"by \(([a-z_, ]+)\)", expr) + re.findall(r"\{([a-z_]+)=", expr):
                        for l in label.replace(" ", "").split(","):
                            if l != "le":
                                check(any(f'{l}="' in s for s in present), f"{where}: {name} has the label {l}")
            hit = [s for s in series if s.startswith('daedalus_prompt_tokens_cached_total{')]
            check(any(int(s.split()[-1]) > 0 for s in hit), "the hit-rate panel has something to show", hit)
        finally:
            stop(serve)
            if failures:
                dump_logs(tmp, ["serve.err"], 3000)
    finish()


if __name__ == "__main__":
    main()
