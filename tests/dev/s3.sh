#!/usr/bin/env bash
# The dev S3 store (Garage, started by `./dev up`) answers real, signed S3 requests with the dev
# key: an object put into the test bucket is listed, read back byte for byte and deleted; a
# request signed with a wrong secret, and an unsigned one, are refused. Plain curl (SigV4
# signing, `--aws-sigv4`), no SDK: what is tested is the server and the credentials `./dev`
# hands to the backend and its tests (HABERCI_TEST_S3_*, or .dev/secrets when run alone).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

SECRETS=$ROOT/.dev/secrets
ENDPOINT=${HABERCI_TEST_S3_ENDPOINT:-http://127.0.0.1:${HABERCI_S3_PORT:-53900}}
REGION=${HABERCI_TEST_S3_REGION:-garage}
KEY_ID=${HABERCI_TEST_S3_ACCESS_KEY_ID:-$(cat "$SECRETS/s3-access-key-id")}
SECRET=${HABERCI_TEST_S3_SECRET_ACCESS_KEY:-$(cat "$SECRETS/s3-secret-access-key")}
BUCKET=${HABERCI_TEST_S3_BUCKET:-haberci-test}

WORK=$(mktemp -d)
OBJECT="dev-tests/s3-sh-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n').bin"
fail() { echo "s3: $*" >&2; exit 1; }

# s3 SECRET METHOD PATH [curl args...]: one signed request; prints the HTTP status, the body goes
# to $WORK/out. The key pair reaches curl as its config on stdin (not in `ps`). S3 wants the
# payload's SHA-256 in x-amz-content-sha256 (signed with the rest): the empty body's unless a
# body is given.
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
s3() {
  local secret=$1 method=$2 path=$3; shift 3
  local sha=$EMPTY_SHA256
  [ "${1:-}" != --upload-file ] || sha=$(sha256sum <"$2" | cut -d' ' -f1)
  printf 'user = "%s:%s"\n' "$KEY_ID" "$secret" \
    | curl -sS --max-time 30 -K - --aws-sigv4 "aws:amz:$REGION:s3" -X "$method" \
      -H "x-amz-content-sha256: $sha" -o "$WORK/out" -w '%{http_code}' "$@" "$ENDPOINT/$BUCKET/$path"
}
expect() { # expect WHAT WANT GOT
  [ "$2" = "$3" ] || fail "$1: HTTP $3, expected $2: $(head -c 400 "$WORK/out" 2>/dev/null)"
}
cleanup() {
  s3 "$SECRET" DELETE "$OBJECT" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# 3 MiB of random bytes: more than one of Garage's 1 MiB blocks, and incompressible.
head -c $((3 * 1024 * 1024)) /dev/urandom >"$WORK/object"

expect "PUT $OBJECT" 200 "$(s3 "$SECRET" PUT "$OBJECT" --upload-file "$WORK/object")"

expect "GET $OBJECT" 200 "$(s3 "$SECRET" GET "$OBJECT")"
cmp -s "$WORK/object" "$WORK/out" || fail "GET $OBJECT: the bytes read back differ from the bytes put"

# curl (7.88) signs the query string as written: parameters in sorted order, values encoded.
expect "ListObjectsV2" 200 "$(s3 "$SECRET" GET "?list-type=2&prefix=dev-tests%2F")"
grep -q "<Key>$OBJECT</Key><LastModified>.*<Size>$((3 * 1024 * 1024))</Size>" "$WORK/out" \
  || fail "ListObjectsV2 does not list $OBJECT with its size: $(head -c 400 "$WORK/out")"

# The server checks signatures: a wrong secret and no signature at all are both refused.
wrong=$(printf '%s' "$SECRET" | tr '0-9a-f' '1-9a-f0') # every hex digit moved by one: never the same
expect "GET with a wrong secret" 403 "$(s3 "$wrong" GET "$OBJECT")"
grep -q '<Code>' "$WORK/out" || fail "GET with a wrong secret: no S3 error body: $(head -c 400 "$WORK/out")"
unsigned=$(curl -sS --max-time 30 -o "$WORK/out" -w '%{http_code}' "$ENDPOINT/$BUCKET/$OBJECT")
expect "unsigned GET" 403 "$unsigned"

expect "DELETE $OBJECT" 204 "$(s3 "$SECRET" DELETE "$OBJECT")"
expect "GET after DELETE" 404 "$(s3 "$SECRET" GET "$OBJECT")"
grep -q '<Code>NoSuchKey</Code>' "$WORK/out" || fail "GET after DELETE: not NoSuchKey: $(head -c 400 "$WORK/out")"

echo "s3: ok (put, get, list, delete; wrong and missing signatures refused) at $ENDPOINT/$BUCKET"
