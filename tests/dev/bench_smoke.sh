#!/usr/bin/env bash
# Smoke of haberci-bench against the running stack: a tiny chat over QUIC and over WebSocket
# through `./dev bench`, and a tiny connect. `--check` makes the tool fail unless the counts add
# up (every session connected, every message Sent and delivered once, in order, none lost).
# Never a timing threshold: the figures of a smoke on a loaded machine mean nothing.
#
# A shell script rather than a Rust test: what it checks is the path a developer runs —
# `./dev bench`, the release binary, its shard processes and the user cache under .dev/bench —
# and it needs the whole stack (api, worker, gateway), which `./dev test` has just brought up.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

"$ROOT/dev" bench chat --users 50 --messages 200 --rate 200 --drain 15 --out "$OUT" --check
"$ROOT/dev" bench chat --users 20 --messages 60 --rate 60 --transport ws --shards 2 --drain 15 --out "$OUT" --check
"$ROOT/dev" bench connect --sessions 40 --transport mix --hold 1 --out "$OUT" --check
reports=$(find "$OUT" -name '*.json' | wc -l)
[ "$reports" = 3 ] || { echo "bench_smoke: expected 3 JSON reports, found $reports" >&2; exit 1; }
echo "bench_smoke: ok"
