#!/usr/bin/env bash
# A port already taken is reported with the port and the process holding it.
set -euo pipefail
cd "$(dirname "$0")/../.."
coproc HOLDER { python3 -u -c '
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1]); sys.stdin.read()'; }
trap 'kill "$HOLDER_PID" 2>/dev/null || true' EXIT
read -r port <&"${HOLDER[0]}"
set +e
out=$(./dev check-port tcp "$port" postgres 2>&1)
code=$?
set -e
[ "$code" != 0 ] || { echo "check-port passed on a taken port: $out"; exit 1; }
grep -q "tcp port $port (needed for postgres) is taken by" <<<"$out" || { echo "unexpected: $out"; exit 1; }
grep -q "python3" <<<"$out" || { echo "holder not named: $out"; exit 1; }
echo "port_taken: ok"
