#!/usr/bin/env bash
# `.dev/` left over from a crashed run: every process is SIGKILLed, leaving stale pid files and
# an unclean Postgres shutdown; `./dev up` must bring the whole stack back, healthy.
set -euo pipefail
cd "$(dirname "$0")/../.."

pids=()
for f in .dev/run/api.pid .dev/run/worker.pid .dev/run/gateway.pid .dev/run/s3.pid .dev/run/pebble.pid .dev/pgbouncer/pgbouncer.pid .dev/redis/redis.pid .dev/pg/data/postmaster.pid; do
  [ -f "$f" ] && pids+=("$(head -n 1 "$f")")
done
[ ${#pids[@]} = 8 ] || { echo "expected 8 running processes, found ${#pids[@]}"; exit 1; }
kill -KILL "${pids[@]}"
for pid in "${pids[@]}"; do
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
done
# The pid files are still there, pointing at dead processes.
[ -f .dev/run/gateway.pid ] && [ -f .dev/pg/data/postmaster.pid ]

out=$(./dev up 2>&1) || { echo "$out"; exit 1; }
grep -q "Haberci is up" <<<"$out" || { echo "$out"; exit 1; }
./dev status | grep -c ' up ' | grep -qx 9 || { ./dev status; exit 1; }
curl -fsS --cacert .dev/certs/ca.pem "https://localhost:${HABERCI_GATEWAY_TCP_PORT:-8443}/readyz" | grep -q '"backend":"ok"'
echo "crash_recovery: ok"
