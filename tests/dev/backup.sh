#!/usr/bin/env bash
# Point-in-time recovery with the real pgBackRest, from the off-site repository:
#
# 1. `./dev backup` (to both repositories; the first is a full backup).
# 2. A chat writes messages; the message ids at that moment are noted, and the time T.
# 3. A second chat writes more; the WAL holding it is archived (`pgbackrest check`).
# 4. `./dev restore --to T --repo 2 --into DIR` restores the S3 copy into a fresh cluster, its
#    WAL fetched from the S3 copy as well.
# 5. The restored cluster holds exactly the messages of step 2: none of step 3, none missing.
#
# A shell script: it drives ./dev's backup and restore commands and the release bench, as an
# operator would, against the stack `./dev test` brought up.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=$(mktemp -d)
PORT=${HABERCI_RESTORE_PORT:-55999}
RESTORED=$(mktemp -d -u /tmp/haberci-restore.XXXXXX)
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
cleanup() {
  if [ -e "$RESTORED/postmaster.pid" ]; then
    (cd / && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$RESTORED" -m immediate -w stop >/dev/null 2>&1) || true
  fi
  rm -rf "$OUT" "$RESTORED"
}
trap cleanup EXIT

fail() { echo "backup: $*" >&2; exit 1; }
live() { "$ROOT/dev" psql -qAtX -c "$1"; }
restored() { (cd / && runuser -u postgres -- "$PGBIN/psql" -h "$RESTORED" -p "$PORT" -U postgres -d haberci -qAtX -c "$1"); }
chat() {
  "$ROOT/dev" bench chat --users 6 --messages "$1" --rate 30 --drain 15 --check --out "$OUT" >"$OUT/chat.log" 2>&1 \
    || { cat "$OUT/chat.log"; fail "the chat failed"; }
}

"$ROOT/dev" backup >"$OUT/backup.log" 2>&1 || { cat "$OUT/backup.log"; fail "./dev backup failed"; }
grep -q "status: ok" "$OUT/backup.log" || { cat "$OUT/backup.log"; fail "pgbackrest info does not say ok"; }

chat 30
# The ids and the time in one transaction that holds off every writer of messages: no commit
# can fall between what is listed and the time noted.
"$ROOT/dev" psql -qAtX >"$OUT/at-t.raw" <<'SQL'
BEGIN;
LOCK TABLE messages IN SHARE MODE;
SELECT id FROM messages ORDER BY id;
SELECT 'target ' || clock_timestamp();
COMMIT;
SQL
grep -v '^target ' "$OUT/at-t.raw" >"$OUT/at-t.txt"
target=$(sed -n 's/^target //p' "$OUT/at-t.raw")
[ -n "$target" ] || fail "no target time noted"
chat 30
live "SELECT id FROM messages ORDER BY id" >"$OUT/now.txt"
before=$(wc -l <"$OUT/at-t.txt"); after=$(wc -l <"$OUT/now.txt")
[ "$after" -gt "$before" ] || fail "the second chat stored nothing ($before then $after messages)"

# Switches to a new WAL segment and waits until it is archived on both repositories.
(cd / && runuser -u postgres -- pgbackrest --config="$(readlink -f "$ROOT/.dev/backup")/pgbackrest.conf" --stanza=haberci check) \
  || fail "pgbackrest check failed"

"$ROOT/dev" restore --to "$target" --repo 2 --into "$RESTORED" --port "$PORT" >"$OUT/restore.log" 2>&1 \
  || { cat "$OUT/restore.log"; fail "./dev restore failed"; }
grep -q "^restore_command = .* --repo=2 .*archive-get" "$RESTORED/postgresql.auto.conf" \
  || fail "the restored cluster does not fetch its WAL from repo2: $(grep restore_command "$RESTORED/postgresql.auto.conf")"
restored "SELECT id FROM messages ORDER BY id" >"$OUT/restored.txt"
if ! cmp -s "$OUT/at-t.txt" "$OUT/restored.txt"; then
  diff "$OUT/at-t.txt" "$OUT/restored.txt" | head -n 20 >&2
  fail "the restored cluster does not hold exactly the messages at $target"
fi
echo "backup: restored to $target from repo2 (S3): $before messages, exactly those then ($after now)"
