#!/usr/bin/env bash
# Monitoring against the real Prometheus that `./dev up` runs (deploy/prometheus):
#
# 1. promtool: the dev and production configurations load, the rules load, and the rules'
#    unit tests (alerts.test.yml) pass.
# 2. Every target (gateway, api, worker, the exporters, Prometheus itself) is up, and
#    PgBouncer's pools arrive through the textfile collector.
# 3. After a small chat, every panel of the Grafana dashboard (deploy/grafana/haberci.json)
#    runs without error and returns at least one series, and every haberci_* metric a panel
#    names is recorded somewhere in the code (a panel ending in `or vector(0)` returns a
#    series even for a misspelled name): no panel is broken or names a metric nobody exports.
# 4. An alert fires for real: the worker is stopped, messages are sent, StreamLagging fires;
#    the worker comes back, the entries are stored and the alert resolves.
#
# A shell script: it stops and restarts a process of the shared dev stack, which no test
# running in parallel may see.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PROM="http://127.0.0.1:${HABERCI_PROMETHEUS_PORT:-59090}"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

fail() { echo "monitoring: $*" >&2; exit 1; }

# query PROMQL: the API's JSON answer of an instant query (exits on an HTTP or query error).
query() { curl -fsS --max-time 5 "$PROM/api/v1/query" --data-urlencode "query=$1"; }
# series PROMQL: how many series the query returns.
series() { query "$1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]["result"]))'; }
# until_true SECONDS WHAT CMD...: polls CMD every second.
until_true() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for $what"
    sleep 1
  done
}

# ---- 1. promtool ---------------------------------------------------------------------------
cd "$ROOT/deploy/prometheus"
promtool check config --syntax-only prometheus.yml >/dev/null || fail "deploy/prometheus/prometheus.yml does not load"
promtool check config "$ROOT/.dev/prometheus/prometheus.yml" >/dev/null || fail "the dev prometheus.yml does not load"
promtool check rules alerts.yml >/dev/null || fail "alerts.yml does not load"
promtool test rules alerts.test.yml || fail "the alert rules' unit tests failed"
cd "$ROOT"

seen_pgbouncer() { [ "$(series 'haberci_pgbouncer_up == 1')" = 1 ]; }

# ---- 2. every target up --------------------------------------------------------------------
targets_up() {
  python3 - "$PROM" <<'PY'
import json, sys, urllib.request
targets = json.load(urllib.request.urlopen(sys.argv[1] + "/api/v1/targets?state=active", timeout=5))
targets = targets["data"]["activeTargets"]
down = ["%s %s: %s %s" % (t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"])
        for t in targets if t["health"] != "up"]
jobs = {t["labels"]["job"] for t in targets}
want = {"gateway", "api", "worker", "postgres", "redis", "node", "prometheus"}
if down or not want <= jobs:
    print("\n".join(down) or "jobs missing: %s" % sorted(want - jobs), file=sys.stderr)
    sys.exit(1)
PY
}
until_true 60 "every Prometheus target to be up" targets_up
until_true 30 "PgBouncer's pools in Prometheus" seen_pgbouncer

# ---- 3. the dashboard, after a chat --------------------------------------------------------
"$ROOT/dev" bench chat --users 10 --messages 40 --rate 20 --drain 15 --check --out "$OUT" >"$OUT/chat.log" 2>&1 \
  || { cat "$OUT/chat.log"; fail "the chat failed"; }
seen() { [ "$(series "$1")" -gt 0 ]; }
until_true 60 "the chat's sends in Prometheus" seen 'haberci_gateway_send_seconds_count > 0'
until_true 60 "the chat's batches in Prometheus" seen 'haberci_worker_batch_entries_count > 0'
python3 - "$ROOT/deploy/grafana/haberci.json" "$PROM" <<'PY'
import json, sys, time, urllib.parse, urllib.request
dashboard, prom = json.load(open(sys.argv[1])), sys.argv[2]
panels = [p for p in dashboard["panels"] if p["type"] != "row"]

def problem(panel, expr):
    """None when the query runs and returns a series, else what is wrong."""
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        answer = json.load(urllib.request.urlopen(url, timeout=5))
    except Exception as err:  # an HTTP 400 is a PromQL error
        return f"{panel['title']}: {err}"
    if answer["status"] != "success" or not answer["data"]["result"]:
        return f"{panel['title']}: no series for {expr}"
    return None

# The chat's last sessions close, and their counters are scraped, a few seconds after it ends.
waiting = [(p, t["expr"]) for p in panels for t in p["targets"]]
deadline = time.monotonic() + 30
while True:
    broken = [why for why in (problem(p, e) for p, e in waiting) if why]
    if not broken or time.monotonic() > deadline:
        break
    time.sleep(2)
# Every haberci_* name a panel queries is written in the code that records it (recording
# rules, haberci:*, are checked by promtool against the rules file instead).
import pathlib, re
root = pathlib.Path(sys.argv[1]).resolve().parents[2]
code = "\n".join(p.read_text() for folder in ("gateway/src", "backend/src", "kit/src")
                  for p in (root / folder).rglob("*.rs"))
code += (root / "deploy/pgbouncer/pool-metrics.sh").read_text()
for panel in panels:
    for target in panel["targets"]:
        for name in set(re.findall(r"\bhaberci_[a-z_]+", target["expr"])):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if f'"{base}"' not in code and base not in code:
                broken.append(f"{panel['title']}: {name} is recorded nowhere in the code")
if broken:
    sys.exit("monitoring: broken dashboard panels:\n  " + "\n  ".join(broken))
print(f"monitoring: {len(panels)} dashboard panels return data")
PY

# ---- 4. an alert fires: the worker stops, sends wait in the stream -------------------------
firing() {
  curl -fsS --max-time 5 "$PROM/api/v1/alerts" | python3 -c '
import json, sys
alerts = json.load(sys.stdin)["data"]["alerts"]
sys.exit(0 if any(a["labels"]["alertname"] == sys.argv[1] and a["state"] == "firing" for a in alerts) else 1)
' "$1"
}
quiet() { ! firing "$1"; }
quiet StreamLagging || fail "StreamLagging fires before the worker was stopped"
worker=$(head -n 1 "$ROOT/.dev/run/worker.pid")
kill -TERM "$worker"
until_true 30 "the worker to stop" bash -c "! kill -0 $worker 2>/dev/null"
# Sends are accepted into the streams (and not answered: no worker); the chat ends unfinished.
"$ROOT/dev" bench chat --users 4 --messages 12 --rate 2 --drain 1 --out "$OUT" >/dev/null 2>&1 || true
until_true 150 "StreamLagging to fire" firing StreamLagging
echo "monitoring: StreamLagging fired with the worker stopped"
"$ROOT/dev" up >"$OUT/up.log" 2>&1 || { cat "$OUT/up.log"; fail "./dev up failed"; }
until_true 120 "StreamLagging to resolve" quiet StreamLagging
until_true 60 "every shard to be caught up" seen 'max(haberci:stream_undelivered_seconds) == 0'
echo "monitoring: ok"
