#!/usr/bin/env bash
# fail2ban with the real daemon `./dev up` runs (deploy/fail2ban):
#
# 1. fail2ban-regex: both filters match the real lines the dev API and gateway write (a failed
#    login, a failed TLS handshake), with their dates and addresses.
# 2. A client in a network namespace of its own (10.231.x.2, through a veth pair) reaches the
#    gateway, fails to log in 5 times, and is banned: its packets are rejected, so its next
#    request fails; once the ban time is over it is unbanned and gets through again.
#
# Needs root (namespaces, nftables), as `./dev test` has. The namespace and its link go at exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOG="$ROOT/.dev/log"
F2B="$ROOT/.dev/fail2ban"
PORT=${HABERCI_GATEWAY_TCP_PORT:-8443}
CA="$ROOT/.dev/certs/ca.pem"
NS=haberci-f2b-$$
# A /30 of its own per run: failures of an earlier run (within the jail's findtime) must not
# count towards this one's ban.
NET=10.231.$((RANDOM % 250))
HOST_IF=hbf2b$$ HOST_IP=$NET.1 CLIENT_IP=$NET.2
OUT=$(mktemp -d)
cleanup() {
  ip netns del "$NS" 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT

fail() { echo "fail2ban: $*" >&2; exit 1; }
f2b() { fail2ban-client -c "$F2B" -s "$F2B/fail2ban.sock" "$@"; }
until_true() { # until_true SECONDS WHAT CMD...: polls CMD every 0.5 s
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for $what"
    sleep 0.5
  done
}

[ "$(id -u)" = 0 ] || fail "needs root (network namespaces, nftables)"
f2b ping >/dev/null || fail "fail2ban is not running (./dev up)"

# ---- 1. the filters against real log lines -------------------------------------------------
login() { # login [ip netns exec NS]: one failed login through the gateway
  "$@" curl -sS --max-time 5 -o /dev/null -w '%{http_code}' --cacert "$CA" \
    --resolve "localhost:$PORT:${GATEWAY_IP:-127.0.0.1}" -X POST "https://localhost:$PORT/v1/auth/login" \
    -H 'content-type: application/json' -d "{\"usernameOrEmail\":\"$NAME\",\"password\":\"not-the-password\"}"
}
# A name of its own per run: the per-account login limit (10 in 5 min) must not answer 429.
NAME=f2b_nobody_$$
[ "$(login)" = 401 ] || fail "a failed login did not answer 401"
# Plain HTTP to the TLS port: a handshake the gateway refuses.
curl -s --max-time 5 -o /dev/null "http://127.0.0.1:$PORT/" || true
logged() { grep -q "$1" "$2"; }
until_true 10 "the failed-login line" logged 'haberci-auth: login failed ip=127.0.0.1 ' "$LOG/api.log"
until_true 10 "the failed-handshake line" logged 'haberci-gateway: handshake failed ip=127.0.0.1 ' "$LOG/gateway.log"
for pair in "haberci-auth:$LOG/api.log:haberci-auth: login failed" \
            "haberci-handshake:$LOG/gateway.log:haberci-gateway: handshake failed"; do
  filter=${pair%%:*}; rest=${pair#*:}; file=${rest%%:*}; line=${rest#*:}
  grep "$line" "$file" | tail -n 3 >"$OUT/$filter.log"
  fail2ban-regex "$OUT/$filter.log" "$ROOT/deploy/fail2ban/filter.d/$filter.conf" >"$OUT/$filter.out" \
    || { cat "$OUT/$filter.out"; fail "fail2ban-regex failed for $filter"; }
  n=$(wc -l <"$OUT/$filter.log")
  grep -q "Lines: $n lines, 0 ignored, $n matched, 0 missed" "$OUT/$filter.out" \
    || { cat "$OUT/$filter.out"; fail "$filter does not match every line"; }
  # A match without a date is never counted by the daemon.
  grep -Eq '^\|  +\[[1-9][0-9]*\] ' <(sed -n '/Date template hits/,/^$/p' "$OUT/$filter.out") \
    || { cat "$OUT/$filter.out"; fail "$filter: no date recognised in the lines"; }
  echo "fail2ban: $filter matches the real log lines"
done

# ---- 2. a client that keeps failing is banned, then unbanned ------------------------------
ip netns add "$NS"
ip link add "$HOST_IF" type veth peer name eth0 netns "$NS"
ip addr add "$HOST_IP/30" dev "$HOST_IF"
ip link set "$HOST_IF" up
ip -n "$NS" addr add "$CLIENT_IP/30" dev eth0
ip -n "$NS" link set eth0 up
ip -n "$NS" link set lo up
client=(ip netns exec "$NS")
export GATEWAY_IP=$HOST_IP
healthz() { "${client[@]}" curl -fsS --max-time 3 -o /dev/null --cacert "$CA" --resolve "localhost:$PORT:$HOST_IP" "https://localhost:$PORT/healthz"; }
healthz || fail "the namespace cannot reach the gateway before any ban"
for _ in 1 2 3 4 5; do
  [ "$(login "${client[@]}")" = 401 ] || fail "a failed login from $CLIENT_IP did not answer 401"
done
banned() { f2b status haberci-auth | grep -q "Banned IP list:.*\b$CLIENT_IP\b"; }
until_true 30 "$CLIENT_IP to be banned" banned
echo "fail2ban: $CLIENT_IP banned after 5 failed logins"
# The jail lists the ban before its action has run: the first ban also creates the nftables
# table, chain and set (actionstart on demand), which takes a moment after the list shows it.
refused() { ! healthz 2>/dev/null; }
until_true 10 "$CLIENT_IP to be refused by the gateway while banned" refused
unbanned() { ! banned; }
until_true 60 "$CLIENT_IP to be unbanned" unbanned
until_true 10 "$CLIENT_IP to get through after its ban" healthz
echo "fail2ban: ok ($CLIENT_IP unbanned after its ban time, gets through again)"
