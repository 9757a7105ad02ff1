#!/usr/bin/env bash
# The zero-downtime upgrade drill (docs/OPERATIONS.md "Upgrades"), on the running stack while
# pairs chat (`./dev bench storm`):
#  1. schema changes run on the live messages table the way OPERATIONS' migration rules say
#     (an index on the partitioned table built partition by partition CONCURRENTLY and
#     attached, then dropped; a CHECK constraint added NOT VALID, validated,
#     dropped), every statement under a 2 s lock timeout, a few rounds during the chat. The
#     index is partial and empty (`WHERE false`): building it takes the same locks and scans
#     as a real one, without writing a copy of a big table's index to the WAL (and the WAL
#     archive) each round. No column is added: a dropped column stays in the catalog for good
#     (a table holds at most 1,600, dropped ones included), and the drill runs at every
#     `./dev test`;
#  2. the worker, then the api are rolled: SIGTERM, wait for the exit, start the binary at its
#     path again with the same settings (a new binary when the file was replaced), ready;
#  3. the gateway is drained (SIGTERM): every session is told `server_draining` with its
#     retry_after, the gateway exits, and its clients resume on another gateway (or on this
#     one, started again).
# `--check` fails the run unless every session came back and every message sent was
# delivered exactly once and in order. Counts, never timings.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=$(mktemp -d)
ddl=

export PGPASSWORD
PGPASSWORD=$(cat "$ROOT/.dev/secrets/pg-password")
sql() { psql -h 127.0.0.1 -p "${HABERCI_PG_PORT:-55432}" -U haberci -d haberci -X -q -v ON_ERROR_STOP=1 "$@"; }
# Whatever a round left behind (a statement that timed out, a run cut short) goes first.
tidy() {
  sql <<'SQL'
SET lock_timeout = '2s';
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_upgrade_drill;
DROP INDEX IF EXISTS messages_upgrade_drill;
SQL
  local p
  for p in $(seq -w 0 15); do
    echo "DROP INDEX CONCURRENTLY IF EXISTS messages_p${p}_upgrade_drill;"
  done | sql
}
# An index on the partitioned `messages`, as docs/OPERATIONS.md says to build one live: on the
# parent only (catalog-only, not valid yet), then CONCURRENTLY on each partition, attached.
index_round() {
  local p
  echo "SET lock_timeout = '2s';"
  echo "CREATE INDEX IF NOT EXISTS messages_upgrade_drill ON ONLY messages (created_at) WHERE false;"
  for p in $(seq -w 0 15); do
    echo "CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_p${p}_upgrade_drill ON messages_p${p} (created_at) WHERE false;"
    echo "ALTER INDEX messages_upgrade_drill ATTACH PARTITION messages_p${p}_upgrade_drill;"
  done
  # Dropping the parent's index drops its partitions' (a brief lock of the table).
  echo "DROP INDEX messages_upgrade_drill;"
}
finish() {
  touch "$OUT/stop"
  [ -z "$ddl" ] || wait "$ddl" 2>/dev/null || true
  tidy >/dev/null 2>&1 || true
  rm -rf "$OUT"
}
trap finish EXIT
tidy

# One round of changes per iteration until told to stop (at most 10); counts the rounds.
schema_changes() {
  local rounds=0
  while [ ! -e "$OUT/stop" ] && [ "$rounds" -lt 10 ]; do
    index_round | sql
    sql <<'SQL'
SET lock_timeout = '2s';
ALTER TABLE messages ADD CONSTRAINT messages_upgrade_drill CHECK (length(content) <= 100000) NOT VALID;
ALTER TABLE messages VALIDATE CONSTRAINT messages_upgrade_drill;
ALTER TABLE messages DROP CONSTRAINT messages_upgrade_drill;
SQL
    rounds=$((rounds + 1))
    echo "$rounds" >"$OUT/rounds"
  done
}
schema_changes &
ddl=$!

gateways=$(find "$ROOT/.dev/run" -name 'gateway*.pid' | wc -l)
back=same; [ "$gateways" -lt 2 ] || back=other
"$ROOT/dev" bench storm --out "$OUT" --check --signal term --roll worker,api --back "$back" \
  --users 40 --rate 20 --duration 16 --kill-after 4 --drain 30

touch "$OUT/stop"
wait "$ddl" || { echo "upgrade: a schema change failed under load" >&2; exit 1; }
ddl=
rounds=$(cat "$OUT/rounds" 2>/dev/null || echo 0)
[ "$rounds" -ge 1 ] || { echo "upgrade: no schema change round completed" >&2; exit 1; }
left=$(sql -At -c "SELECT (SELECT count(*) FROM pg_indexes WHERE indexname = 'messages_upgrade_drill') + (SELECT count(*) FROM pg_constraint WHERE conname = 'messages_upgrade_drill')")
[ "$left" = 0 ] || { echo "upgrade: the drill's index or constraint is still there" >&2; exit 1; }
grep -h "restarted (SIGTERM → ready again)\|SIGTERM → gateway empty\|gaps (lost)" "$OUT"/*/*.md "$OUT"/*.md 2>/dev/null || true
echo "upgrade: ok (worker, api rolled, gateway drained while chatting; $rounds schema change rounds under load)"
