#!/usr/bin/env bash
# PgBouncer's pools as Prometheus metrics, for node exporter's textfile collector: reads
# `SHOW POOLS` on PgBouncer's admin console (as a user listed in `stats_users`) and writes
# OUT atomically. Debian 12's prometheus-pgbouncer-exporter (1.7) cannot read PgBouncer 1.18
# (it asks for a `total_requests` column that no longer exists), hence this.
#
#   pool-metrics.sh OUT [EVERY_SECONDS]   once, or every EVERY_SECONDS until killed
#
# Connection from libpq's environment: PGHOST, PGPORT, PGUSER, PGPASSWORD (or ~/.pgpass).
# Production: a systemd timer every 15 s (deploy/systemd/haberci-pgbouncer-metrics.*).
set -euo pipefail
out=$1 every=${2:-}

scrape() {
  local rows
  if ! rows=$(psql -d pgbouncer -qAF' ' -c 'SHOW POOLS' 2>/dev/null); then
    printf 'haberci_pgbouncer_up 0\n' >"$out.tmp" && mv "$out.tmp" "$out"
    return
  fi
  awk '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    /^\(/ || $1 == "pgbouncer" { next }
    {
      l = sprintf("{database=\"%s\",user=\"%s\"}", $col["database"], $col["user"])
      wait = $col["maxwait"] + $col["maxwait_us"] / 1e6
      printf "haberci_pgbouncer_clients_active%s %s\n", l, $col["cl_active"]
      printf "haberci_pgbouncer_clients_waiting%s %s\n", l, $col["cl_waiting"]
      printf "haberci_pgbouncer_servers_active%s %s\n", l, $col["sv_active"]
      printf "haberci_pgbouncer_servers_idle%s %s\n", l, $col["sv_idle"]
      printf "haberci_pgbouncer_client_maxwait_seconds%s %s\n", l, wait
    }
    END { print "haberci_pgbouncer_up 1" }
  ' <<<"$rows" >"$out.tmp"
  mv "$out.tmp" "$out"
}

if [ -z "$every" ]; then scrape; exit; fi
while :; do
  scrape
  sleep "$every"
done
