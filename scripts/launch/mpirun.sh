#!/usr/bin/env bash
# A cluster over a hostfile: the coordinator on this host (the hostfile's first), the workers
# on every slot of the hostfile via mpirun. Started again when they exit (a worker died and
# mpirun ended the job), up to DAEDALUS_MAX_RESTARTS times. Ctrl-C / SIGTERM stops everything.
# With `--transport ucx` among the worker flags the cluster is elastic: each slot's worker is
# its own `mpirun -np 1`, and only a dead one is started again; it joins the running cluster
# while the others serve on (DAEDALUS_MAX_RESTARTS then counts per slot).
#
#   scripts/launch/mpirun.sh HOSTFILE MODEL_DIR [extra worker flags...]
#
# Variables (all optional):
#   DAEDALUS_BIN             the daedalus executable, at the same path on every host (default: build/bin/daedalus)
#   DAEDALUS_WORKERS         number of workers (default: the hostfile's slots)
#   DAEDALUS_HOST            this host's address as the workers reach it (default: hostname -f)
#   DAEDALUS_PORT            coordinator gRPC port (default 50051)
#   DAEDALUS_METRICS_PORT    Prometheus /metrics port (default 9400)
#   DAEDALUS_CLUSTER_SECRET  secret the workers present to register (recommended across hosts)
#   DAEDALUS_AUTH_TOKEN      bearer token clients must send
#   DAEDALUS_TLS_CERT, DAEDALUS_TLS_KEY   serve gRPC over TLS (workers verify with the certificate)
#   DAEDALUS_MAX_RESTARTS    default 10
#   MPIRUN_ARGS              extra mpirun arguments (e.g. "--mca btl_tcp_if_include eth0")
# The model directory must be readable at the same path on every host.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,21p "$0"; exit 2; }
hostfile="$1" model="$2"; shift 2
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${DAEDALUS_BIN:-$root/build/bin/daedalus}"
workers="${DAEDALUS_WORKERS:-$(awk '!/^#/ && NF { n = 1; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { sub("slots=", "", $i); n = $i } total += n } END { print total }' "$hostfile")}"
host="${DAEDALUS_HOST:-$(hostname -f)}"
port="${DAEDALUS_PORT:-50051}"
tls=()
worker_tls=()
if [ -n "${DAEDALUS_TLS_CERT:-}" ]; then
  tls=(--tls-cert "$DAEDALUS_TLS_CERT" --tls-key "$DAEDALUS_TLS_KEY")
  worker_tls=(--tls-ca "$DAEDALUS_TLS_CERT")
fi
root_flag=()
[ "$(id -u)" = 0 ] && root_flag=(--allow-run-as-root)
elastic=""
for flag in "$@"; do [ "$flag" = ucx ] && [ "${previous:-}" = --transport ] && elastic=1; previous="$flag"; done

"$bin" coordinator --model "$model" --world-size "$workers" --listen "0.0.0.0:$port" \
  --metrics-listen "0.0.0.0:${DAEDALUS_METRICS_PORT:-9400}" "${tls[@]}" &
coordinator=$!
workers_pid=""
stop() {
  [ -n "$workers_pid" ] && kill -TERM "$workers_pid" 2>/dev/null || true
  kill -TERM "$coordinator" 2>/dev/null || true
  wait 2>/dev/null || true
  exit 0
}
trap stop INT TERM

if [ -n "$elastic" ]; then
  # One supervised `mpirun -np 1` per slot, in the hostfile's order.
  slots=$(awk '!/^#/ && NF { n = 1; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { sub("slots=", "", $i); n = $i }
                             for (k = 0; k < n; k++) print $1 }' "$hostfile" | head -n "$workers")
  pids=()
  stop_elastic() {
    for pid in "${pids[@]}"; do pkill -TERM -P "$pid" 2>/dev/null || true; kill -TERM "$pid" 2>/dev/null || true; done
    kill -TERM "$coordinator" 2>/dev/null || true
    wait 2>/dev/null || true
    exit 0
  }
  trap stop_elastic INT TERM
  for slot_host in $slots; do
    (
      trap 'kill -TERM "$child" 2>/dev/null; wait; exit 0' TERM
      restarts=0
      while true; do
        # shellcheck disable=SC2086
        mpirun "${root_flag[@]}" --host "$slot_host" -np 1 -x DAEDALUS_CLUSTER_SECRET ${MPIRUN_ARGS:-} \
          "$bin" worker --coordinator "$host:$port" --model "$model" --rank -1 --world-size 0 "${worker_tls[@]}" "$@" &
        child=$!
        rc=0
        wait "$child" || rc=$?
        kill -0 "$coordinator" 2>/dev/null || exit 1
        restarts=$((restarts + 1))
        [ "$restarts" -le "${DAEDALUS_MAX_RESTARTS:-10}" ] || { echo "mpirun.sh: the worker on $slot_host exited $restarts times; giving up" >&2; exit 1; }
        echo "mpirun.sh: the worker on $slot_host exited (status $rc); starting it again: it joins the running cluster" >&2
        sleep 1
      done
    ) &
    pids+=($!)
  done
  wait "$coordinator" || true
  echo "mpirun.sh: the coordinator exited" >&2
  stop_elastic
fi

restarts=0
while true; do
  # shellcheck disable=SC2086
  mpirun "${root_flag[@]}" --hostfile "$hostfile" -np "$workers" -x DAEDALUS_CLUSTER_SECRET ${MPIRUN_ARGS:-} \
    "$bin" worker --coordinator "$host:$port" --model "$model" "${worker_tls[@]}" "$@" &
  workers_pid=$!
  rc=0
  wait "$workers_pid" || rc=$?
  workers_pid=""
  kill -0 "$coordinator" 2>/dev/null || { echo "mpirun.sh: the coordinator exited" >&2; exit 1; }
  restarts=$((restarts + 1))
  if [ "$restarts" -gt "${DAEDALUS_MAX_RESTARTS:-10}" ]; then
    echo "mpirun.sh: the workers exited $restarts times; giving up" >&2
    stop
  fi
  echo "mpirun.sh: the workers exited (status $rc); starting them again" >&2
  sleep 1
done
