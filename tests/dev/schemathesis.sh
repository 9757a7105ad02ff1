#!/usr/bin/env bash
# schemathesis against the running stack, through the gateway: it reads /v1/openapi.json, sends
# generated requests (valid and invalid) to every operation, and fails on any 5xx or any response
# that does not match the documented schema. Bounded (a fixed number of examples per operation,
# a fixed seed) so `./dev test` stays fast. Installs a pinned schemathesis into .dev/venv once.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

SCHEMATHESIS_VERSION=4.32.5
VENV=$ROOT/.dev/venv
# schemathesis and hypothesis keep caches in the working directory: run there, not in the checkout.
WORK=$ROOT/.dev/schemathesis
GATEWAY="https://localhost:${HABERCI_GATEWAY_TCP_PORT:-8443}"
CA=$ROOT/.dev/certs/ca.pem
EXAMPLES=${HABERCI_SCHEMATHESIS_EXAMPLES:-20}

ensure_venv() {
  local installed=""
  # `pip show` fails when the package is missing (the venv is shared with python_client.sh,
  # which may have made it first): that means "not installed", not an error.
  if [ -x "$VENV/bin/pip" ]; then
    installed=$("$VENV/bin/pip" show schemathesis 2>/dev/null | sed -n 's/^Version: //p' || true)
  fi
  if [ "$installed" != "$SCHEMATHESIS_VERSION" ]; then
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  fi
}

# A fresh account, so the authenticated operations are exercised past the 401.
access_token() {
  local name="st_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  curl -fsS --cacert "$CA" -H 'content-type: application/json' \
    -d "{\"username\":\"$name\",\"email\":\"$name@example.com\",\"password\":\"schemathesis password\",\"displayName\":\"Schemathesis\"}" \
    "$GATEWAY/v1/auth/register" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["tokens"]["accessToken"])'
}

# --request-retries: a request that fails at the network level (no HTTP answer) is tried again.
# Seen rarely under load: `POST /v1/groups` ending in a TLS EOF or a 502 from a failed
# gateway→backend send; under investigation (see the stop notes), and never a 5xx or schema
# failure, which still fail the run.
run() { # run TOKEN FILTER...
  local token=$1; shift
  mkdir -p "$WORK"
  (cd "$WORK" && "$VENV/bin/schemathesis" run "$GATEWAY/v1/openapi.json" \
    --tls-verify "$CA" \
    --checks not_a_server_error,response_schema_conformance \
    --max-examples "$EXAMPLES" --seed 5 \
    --request-retries 2 \
    --header "Authorization: Bearer $token" \
    --report junit --report-dir "$WORK/reports" \
    "$@")
}

ensure_venv
# Logging out and revoking a session (schemathesis finds its own session id in GET
# /v1/auth/sessions) end the token the other operations need: those run last, on their own.
# The tus PATCH's body is `application/offset+octet-stream`, which schemathesis cannot generate;
# backend/tests/it/media.rs drives that operation instead.
run "$(access_token)" --exclude-path-regex 'logout|/v1/auth/sessions/' \
  --exclude-name 'PATCH /v1/media/uploads/{id}'
run "$(access_token)" --include-path-regex 'logout|/v1/auth/sessions/'
echo "schemathesis: ok"
