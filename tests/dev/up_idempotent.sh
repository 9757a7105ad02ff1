#!/usr/bin/env bash
# `./dev up` on a running stack changes nothing: same processes, same certificates, and it says
# so. Also checks the README's promise: curl with the dev CA gets 200 and Alt-Svc from the
# gateway. Run by `./dev test` after it has brought the stack up once.
set -euo pipefail
cd "$(dirname "$0")/../.."

pids_before=$(cat .dev/run/*.pid .dev/pgbouncer/pgbouncer.pid .dev/redis/redis.pid | sort | tr '\n' ' ')
hash_before=$(cat .dev/certs/wt.sha256)

out=$(./dev up 2>&1)
if ! grep -q "nothing changed" <<<"$out"; then
  echo "second ./dev up did something:"; echo "$out"; exit 1
fi
pids_after=$(cat .dev/run/*.pid .dev/pgbouncer/pgbouncer.pid .dev/redis/redis.pid | sort | tr '\n' ' ')
[ "$pids_before" = "$pids_after" ] || { echo "processes changed: $pids_before -> $pids_after"; exit 1; }
[ "$hash_before" = "$(cat .dev/certs/wt.sha256)" ] || { echo "certificates changed"; exit 1; }

headers=$(curl -fsS -D - -o /dev/null --cacert .dev/certs/ca.pem "https://localhost:${HABERCI_GATEWAY_TCP_PORT:-8443}/healthz")
grep -q '^HTTP/[0-9.]* 200' <<<"$headers" || { echo "healthz: $headers"; exit 1; }
grep -qi "^alt-svc: h3=\":${HABERCI_GATEWAY_UDP_PORT:-4433}\"" <<<"$headers" || { echo "no Alt-Svc: $headers"; exit 1; }
curl -fsS --cacert .dev/certs/ca.pem "https://localhost:${HABERCI_GATEWAY_TCP_PORT:-8443}/v1/version" | grep -q '"name":"haberci"'
echo "up_idempotent: ok"
