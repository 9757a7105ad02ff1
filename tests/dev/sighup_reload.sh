#!/usr/bin/env bash
# SIGHUP makes the running gateway reload its certificates (the file watcher is tested in the
# gateway's Rust tests; this is the signal path, on the real process started by ./dev).
set -euo pipefail
cd "$(dirname "$0")/../.."
pid=$(head -n 1 .dev/run/gateway.pid)
[ "$(cat "/proc/$pid/comm")" = haberci-gateway ] || { echo "gateway is not running"; exit 1; }
before=$(grep -c "SIGHUP: reloading certificates" .dev/log/gateway.log || true)
kill -HUP "$pid"
for _ in $(seq 100); do
  now=$(grep -c "SIGHUP: reloading certificates" .dev/log/gateway.log || true)
  [ "$now" -gt "$before" ] && break
  sleep 0.1
done
[ "$now" -gt "$before" ] || { echo "no reload logged after SIGHUP"; tail -n 20 .dev/log/gateway.log; exit 1; }
kill -0 "$pid" || { echo "gateway died on SIGHUP"; exit 1; }
curl -fsS --cacert .dev/certs/ca.pem "https://localhost:${HABERCI_GATEWAY_TCP_PORT:-8443}/healthz" >/dev/null
echo "sighup_reload: ok"
