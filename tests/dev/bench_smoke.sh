#!/usr/bin/env bash
# Smoke of haberci-bench against the running stack, every scenario at a tiny size, through
# `./dev bench`. `--check` makes the tool fail unless the counts add up (every session
# connected, every message accepted and delivered once, in order, none lost; for `storm` no gap
# after the reconnect; for `db` every row stored). Never a timing threshold: the figures of a
# smoke on a loaded machine mean nothing.
#
# A shell script rather than a Rust test: what it checks is the path a developer runs —
# `./dev bench`, the release binary, its shard processes, the user cache under .dev/bench, the
# Socket.IO peer installed by `npm ci` — and it needs the whole stack (api, worker, gateway),
# which `./dev test` has just brought up.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

bench() { "$ROOT/dev" bench "$@" --out "$OUT" --check; }

bench chat --users 50 --messages 200 --rate 200 --drain 15
bench chat --users 20 --messages 60 --rate 60 --transport ws --shards 2 --drain 15
bench connect --sessions 45 --transport mix --hold 1
# Sessions leaving and arriving at a level count, on every transport.
bench churn --sessions 40 --rate 20 --duration 3 --transport mix
# Fan-out: 2 groups of 20 members (made through the API once, then cached).
bench group --members 20 --groups 2 --rate 20 --messages 40 --drain 15
# A gateway killed mid-chat: its clients move to another gateway (or, with one gateway, retry
# it while the bench starts it again) and resume without a gap. A short heartbeat so QUIC
# clients notice the dead gateway within the smoke's time.
gateways=$(find "$ROOT/.dev/run" -name 'gateway*.pid' | wc -l)
back=same; [ "$gateways" -lt 2 ] || back=other
bench storm --back "$back" --users 20 --rate 20 --duration 6 --kill-after 2 --ping-ms 1000 --pong-timeout-ms 1000 --drain 20
# The database alone, in a database of its own that it drops: a small history table, the
# worker's insert path at two batch sizes, history pages.
bench db --messages 100000 --conversations 100 --batch-sizes 1,20 --insert-seconds 1 --queries 200
# Haberci and the Socket.IO peer, side by side (the peer's nodes and Redis on 9100–9102).
bench compare --sessions 60 --hold 1 --users 20 --messages 60 --rate 60 --drain 15

reports=$(find "$OUT" -name '*.json' | wc -l)
[ "$reports" = 8 ] || { echo "bench_smoke: expected 8 JSON reports, found $reports" >&2; exit 1; }
plots=$(find "$OUT" -name '*.svg' | wc -l)
[ "$plots" -ge 10 ] || { echo "bench_smoke: expected plots, found $plots SVG files" >&2; exit 1; }
grep -q '"socketio"' "$OUT"/*/compare-*.json || { echo "bench_smoke: no Socket.IO side in the compare report" >&2; exit 1; }
# Every chat, group and connect report carries its cost ledger, with Redis and Postgres counted.
for kind in chat group connect; do
  for file in "$OUT"/*/"$kind"-*.md; do
    grep -q '### Cost ledger' "$file" || { echo "bench_smoke: no cost ledger in $file" >&2; exit 1; }
    grep -q '^Redis commands: [0-9]' "$file" || { echo "bench_smoke: Redis not counted in $file" >&2; exit 1; }
    grep -q '^Postgres: [0-9]' "$file" || { echo "bench_smoke: Postgres not counted in $file" >&2; exit 1; }
  done
done
echo "bench_smoke: ok"
