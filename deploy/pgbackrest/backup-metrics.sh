#!/usr/bin/env bash
# pgBackRest's backups as Prometheus metrics, for node exporter's textfile collector: when
# the last backup of each type finished, per repository, from `pgbackrest info --output=json`.
# Read by the BackupLate alert. Run after every backup (ExecStartPost of the backup units;
# `./dev backup` in dev).
#
#   pgbackrest --stanza=haberci info --output=json | backup-metrics.sh OUT
set -euo pipefail
out=$1
python3 -c '
import json, sys
lines = []
for stanza in json.load(sys.stdin):
    last = {}
    for backup in stanza.get("backup", []):
        repo = str(backup.get("database", {}).get("repo-key", 1))
        key = (repo, backup["type"])
        last[key] = max(last.get(key, 0), backup["timestamp"]["stop"])
    for (repo, kind), stop in sorted(last.items()):
        lines.append("haberci_backup_last_timestamp_seconds{repo=\"%s\",type=\"%s\"} %d" % (repo, kind, stop))
    status = stanza.get("status", {}).get("code", 99)
    lines.append("haberci_backup_stanza_ok %d" % (1 if status == 0 else 0))
print("\n".join(lines))
' >"$out.tmp"
mv "$out.tmp" "$out"
