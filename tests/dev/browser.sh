#!/usr/bin/env bash
# The browser SDK (web/sdk) and the demo page the gateway serves, in real headless Chromium
# (Debian's /usr/bin/chromium, driven by playwright-core from web/'s lockfile) against the
# running stack: two users over WebTransport, a third whose WebTransport fails (wrong certificate hashes) falling back
# to WebSocket, a gateway restart in the middle of a chat, and a message from the Rust SDK
# (client/examples/interop_peer.rs). Restarts this stack's gateway once. A screenshot of the
# chat is left in .dev/test-output/chat.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

[ -x /usr/bin/chromium ] || { echo "browser: /usr/bin/chromium is missing (./dev test installs it)" >&2; exit 1; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || { echo "browser: playwright-core needs Node.js >= 20, found $(node --version)" >&2; exit 1; }
[ -d web/node_modules/playwright-core ] || { echo "browser: web/node_modules is missing (./dev up runs npm ci)" >&2; exit 1; }

cargo build -q --locked -p haberci-client --example interop_peer
export HABERCI_TEST_INTEROP_PEER="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/interop_peer"
export HABERCI_TEST_GATEWAY_URL=${HABERCI_TEST_GATEWAY_URL:-https://localhost:${HABERCI_GATEWAY_TCP_PORT:-8443}}
export HABERCI_TEST_GATEWAY_UDP=${HABERCI_TEST_GATEWAY_UDP:-localhost:${HABERCI_GATEWAY_UDP_PORT:-4433}}
export HABERCI_TEST_CA=${HABERCI_TEST_CA:-$ROOT/.dev/certs/ca.pem}
export HABERCI_TEST_OUTPUT=$ROOT/.dev/test-output
# Node (Playwright's request interception) trusts the dev CA; Chromium is given the TCP leaf's
# key to accept, and pins the WebTransport certificate by hash as any page does.
export NODE_EXTRA_CA_CERTS=$HABERCI_TEST_CA
# SIGTERM (the gateway drains its sessions with server_draining), then wait for the process to
# be gone; `./dev up` starts what is down.
export HABERCI_TEST_GATEWAY_STOP="pid=\$(head -n 1 '$ROOT/.dev/run/gateway.pid') && kill -TERM \"\$pid\" && timeout 30 tail --pid=\"\$pid\" -f /dev/null"
export HABERCI_TEST_GATEWAY_START="cd '$ROOT' && ./dev up >/dev/null"

cd web
timeout 300 node --test --test-reporter=spec tests/browser.test.mjs
echo "browser: ok"
