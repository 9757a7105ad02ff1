#!/usr/bin/env bash
# deploy/systemd: every unit parses, and its sandbox scores an exposure of at most 2.0 in
# `systemd-analyze security` (offline, against a root holding only our units and their shared
# drop-in, haberci-.service.d/sandbox.conf). A unit without that drop-in must score worse, so
# the check cannot pass by not reading it. The units are not started here: this machine has no
# systemd as PID 1 (deploy/README.md installs them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
UNITS=$(mktemp -d)
trap 'rm -rf "$UNITS"' EXIT
mkdir -p "$UNITS/etc/systemd/system"
cp -r "$ROOT"/deploy/systemd/* "$UNITS/etc/systemd/system/"

exposure() { # exposure UNIT: the overall exposure level, e.g. 1.6
  systemd-analyze security --offline=true --root="$UNITS" "$1" 2>&1 \
    | sed -n 's/^→ Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'
}
checked=0
for file in "$ROOT"/deploy/systemd/haberci-*.service; do
  unit=$(basename "$file")
  case "$unit" in *@.service) unit=${unit%@.service}@1.service ;; esac
  level=$(exposure "$unit")
  [ -n "$level" ] || { systemd-analyze security --offline=true --root="$UNITS" "$unit" >&2 || true; echo "systemd: $unit did not parse" >&2; exit 1; }
  awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }' || { echo "systemd: $unit exposure $level > 2.0" >&2; exit 1; }
  echo "systemd: $unit exposure $level"
  checked=$((checked + 1))
done
[ "$checked" -ge 6 ] || { echo "systemd: only $checked units found" >&2; exit 1; }
rm -r "$UNITS/etc/systemd/system/haberci-.service.d"
level=$(exposure haberci-gateway@1.service)
awk -v l="$level" 'BEGIN { exit !(l > 2.0) }' || { echo "systemd: the gateway scores $level without the sandbox drop-in" >&2; exit 1; }
echo "systemd: ok ($checked units; the gateway without the drop-in scores $level)"
