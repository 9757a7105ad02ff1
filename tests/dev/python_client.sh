#!/usr/bin/env bash
# The Python test client (tests/python/) against the running stack: a second implementation of
# the protocol, written from docs/PROTOCOL.md and the golden vectors only. Checks its codec
# against every vector in wire/tests/vectors/, its QUIC and WebTransport paths against an
# in-process aioquic server, then runs tests/python/interop.py through the gateway: handshake and
# close codes on every transport, messages both ways (Sent, delivery, order, idempotent retry,
# receipts, resume). Installs pinned aioquic and websockets into .dev/venv (shared with
# schemathesis.sh).
#
# Transports of the scenario (defaults: Alice websocket, Bob webtransport, Carol quic):
#   HABERCI_PY_A_TRANSPORT, HABERCI_PY_B_TRANSPORT, HABERCI_PY_C_TRANSPORT
# Bob as an external program speaking interop.py's JSON-lines peer protocol (e.g. the Rust client):
#   HABERCI_PY_PEER_CMD="path/to/peer --stdio"
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

AIOQUIC_VERSION=1.7.2
WEBSOCKETS_VERSION=17.4
VENV=${HABERCI_PY_VENV:-$ROOT/.dev/venv}
CA=${HABERCI_TEST_CA:-$ROOT/.dev/certs/ca.pem}
PY=$VENV/bin/python

ensure_venv() {
  local have_aioquic="" have_websockets=""
  if [ -x "$VENV/bin/pip" ]; then
    have_aioquic=$("$VENV/bin/pip" show aioquic 2>/dev/null | sed -n 's/^Version: //p' || true)
    have_websockets=$("$VENV/bin/pip" show websockets 2>/dev/null | sed -n 's/^Version: //p' || true)
  fi
  if [ "$have_aioquic" != "$AIOQUIC_VERSION" ] || [ "$have_websockets" != "$WEBSOCKETS_VERSION" ]; then
    echo "installing aioquic $AIOQUIC_VERSION and websockets $WEBSOCKETS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
      "aioquic==$AIOQUIC_VERSION" "websockets==$WEBSOCKETS_VERSION"
  fi
}

ensure_venv
"$PY" tests/python/haberci_client.py --self-test wire/tests/vectors
"$PY" -m unittest -q tests/python/test_vectors.py tests/python/test_transports.py

args=(--ca "$CA" --host localhost
  --tcp-port "${HABERCI_GATEWAY_TCP_PORT:-8443}" --udp-port "${HABERCI_GATEWAY_UDP_PORT:-4433}"
  --a-transport "${HABERCI_PY_A_TRANSPORT:-websocket}"
  --b-transport "${HABERCI_PY_B_TRANSPORT:-webtransport}"
  --c-transport "${HABERCI_PY_C_TRANSPORT:-quic}")
if [ -n "${HABERCI_PY_PEER_CMD:-}" ]; then
  "$PY" tests/python/interop.py "${args[@]}" --peer-cmd "$HABERCI_PY_PEER_CMD"
else
  "$PY" tests/python/interop.py "${args[@]}"
  # The same scenario with Bob played by the Rust SDK (client/examples/interop_peer.rs), once
  # per transport it offers: Python and Rust clients talk to each other through the gateway.
  cargo build -q -p haberci-client --example interop_peer
  peer="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/interop_peer"
  for transport in websocket quic webtransport; do
    echo "interop with the Rust client as Bob over $transport"
    "$PY" tests/python/interop.py "${args[@]}" --b-transport "$transport" --peer-cmd "$peer"
  done
fi
echo "python client: ok"
