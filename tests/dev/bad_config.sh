#!/usr/bin/env bash
# Bad configuration: each binary lists every bad setting at once and exits 64, before binding.
set -euo pipefail
bin="${CARGO_TARGET_DIR:-/var/cache/haberci/target}/release"

set +e
out=$(HABERCI_GATEWAY_TCP_ADDR=nope HABERCI_BACKEND_URL=ftp://x HABERCI_MAX_BODY_BYTES=lots HABERCI_RUNTIME_THREADS=0 "$bin/haberci-gateway" 2>&1)
code=$?
set -e
[ "$code" = 64 ] || { echo "gateway exit $code, want 64: $out"; exit 1; }
for key in HABERCI_GATEWAY_TCP_ADDR HABERCI_BACKEND_URL HABERCI_MAX_BODY_BYTES HABERCI_RUNTIME_THREADS; do
  grep -q "$key" <<<"$out" || { echo "gateway did not name $key: $out"; exit 1; }
done

set +e
out=$(env -u HABERCI_DATABASE_URL HABERCI_REDIS_URL=http://x HABERCI_RUNTIME_THREADS=many "$bin/haberci-backend" api 2>&1)
code=$?
set -e
[ "$code" = 64 ] || { echo "backend exit $code, want 64: $out"; exit 1; }
grep -q "HABERCI_DATABASE_URL is not set" <<<"$out" || { echo "backend: $out"; exit 1; }
grep -q "HABERCI_REDIS_URL" <<<"$out" || { echo "backend: $out"; exit 1; }
grep -q "HABERCI_RUNTIME_THREADS" <<<"$out" || { echo "backend: $out"; exit 1; }
echo "bad_config: ok"
