#!/usr/bin/env bash
# The stack on several hosts (tests/hosts/hosts.sh): `./dev hosts up` builds network
# namespaces for the database, Redis and two app hosts, and the kernel's balancer in front of
# the gateways; from this namespace (the client host), through the balancer:
# - a chat (QUIC, WebTransport and WebSocket sessions on both app hosts), `--check`: every
#   message delivered once, in order;
# - a storm (a gateway SIGKILLed and started again in its namespace), `--check`: no gap;
# - the e2e test `hosts::` : a QUIC client that changes address six times keeps its
#   connection (the balancer routes by the server id in the connection ID);
# - both gateways served sessions (their handshake counters);
# then `./dev hosts down`. Counts only, never timings.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=$(mktemp -d)
trap '"$ROOT/dev" hosts down >/dev/null 2>&1 || true; rm -rf "$OUT"' EXIT

"$ROOT/dev" hosts up
bench() { "$ROOT/dev" hosts bench "$@" --out "$OUT" --check; }
bench chat --users 40 --messages 200 --rate 100 --drain 15
bench storm --back same --users 20 --rate 20 --duration 6 --kill-after 2 --ping-ms 1000 --pong-timeout-ms 1000 --drain 20

HABERCI_TEST_HOSTS_VIP=10.77.1.2 HABERCI_TEST_HOSTS_UDP_PORT=${HABERCI_GATEWAY_UDP_PORT:-4433} \
HABERCI_TEST_HOSTS_TCP_PORT=${HABERCI_GATEWAY_TCP_PORT:-8443} HABERCI_TEST_CA="$ROOT/.dev/certs/ca.pem" \
  cargo nextest run --locked --cargo-quiet -p haberci-e2e -E 'test(/^hosts::/)'

metrics_port=$(( ${HABERCI_METRICS_PORT:-59600} + 21 ))
for app in haberci-app1 haberci-app2; do
  handshakes=$(ip netns exec "$app" curl -fsS "http://127.0.0.1:$metrics_port/metrics" \
    | awk '/^haberci_gateway_handshakes_total/ { n += $2 } END { print n + 0 }')
  [ "$handshakes" -gt 0 ] || { echo "hosts: the gateway on $app served no session" >&2; exit 1; }
done
echo "hosts: ok"
