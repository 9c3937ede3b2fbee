#!/usr/bin/env bash
# Checks a provider archive the way a wasmCloud host will use it.
#
# usage: tests/par_test.sh MAKE_PAR PROVIDER_BINARY
#   MAKE_PAR         the par/make_par.cpp tool
#   PROVIDER_BINARY  the provider to pack (build/http-server)
#
# It packs the binary with throw-away keys, unpacks the archive with tar,
# checks the hash with sha256sum and the JWT with `MAKE_PAR --verify`, checks
# that tampering is caught, then runs the extracted binary under `env -i`
# (the host clears the environment) with base64 host data on stdin.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 MAKE_PAR PROVIDER_BINARY" >&2
  exit 2
fi
make_par=$(realpath "$1")
binary=$(realpath "$2")
expect="Hello from the provider!"
target="$(uname -m)-linux"

# demo/lib.sh: free ports, waiting, host data lines; its cleanup stops what PIDS holds and
# removes $LOGS, this script's work directory.
SCRIPT_NAME=par_test
source "$(dirname "${BASH_SOURCE[0]}")/../demo/lib.sh"
work=$LOGS
trap cleanup EXIT

failures=0
pass() { echo "ok   - $1" | tee -a "$work/results"; }
fail_check() { echo "FAIL - $1"; failures=$((failures + 1)); }
check() { # check DESCRIPTION COMMAND...
  local description=$1; shift
  if "$@" >"$work/last.log" 2>&1; then pass "$description"; else fail_check "$description"; cat "$work/last.log"; fi
}
# base64url (no padding) to bytes
b64url_decode() {
  local s=${1//-/+}; s=${s//_//}
  while (( ${#s} % 4 )); do s+="="; done
  printf '%s' "$s" | base64 -d
}

# The binary is packed under the name the Makefile gives it, which also names
# the service key (<name>_service.nk), as with wash.
cp "$binary" "$work/http-server"
keys="$work/keys"
par="$work/http-server.par.gz"
pack() {
  "$make_par" --bin "$work/http-server" --arch "$target" --name http-server \
    --vendor par-test --version 0.1.0 --rev 1 --keys-dir "$keys" --account tester \
    --out "$par" >>"$work/make_par.log" 2>&1
}

check "make_par creates the archive" pack
check "the account key file has mode 0600" test "$(stat -c %a "$keys/tester_account.nk")" = 600
check "the service key file has mode 0600" test "$(stat -c %a "$keys/http-server_service.nk")" = 600
check "the archive is gzip" test "$(head -c2 "$par" | od -An -tx1 | tr -d ' ')" = 1f8b

mkdir "$work/unpacked"
tar -xzf "$par" -C "$work/unpacked"
check "the archive holds exactly claims.jwt and $target.bin" \
  test "$(cd "$work/unpacked" && ls | sort | tr '\n' ' ')" = "claims.jwt $target.bin "
check "the packed binary is the input binary" cmp "$binary" "$work/unpacked/$target.bin"

jwt=$(cat "$work/unpacked/claims.jwt")
IFS=. read -r jwt_header jwt_claims _ <<<"$jwt"
header=$(b64url_decode "$jwt_header")
claims=$(b64url_decode "$jwt_claims")
check "the JWT header is the wascap header" test "$header" = '{"typ":"jwt","alg":"Ed25519"}'
hash=$(sha256sum "$work/unpacked/$target.bin" | cut -d' ' -f1 | tr a-f A-F)
check "target_hashes holds the upper-case SHA-256 of $target.bin" \
  grep -q "\"target_hashes\":{\"$target\":\"$hash\"}" <<<"$claims"
check "iss is an account key and sub a service key" \
  grep -Eq '"iss":"A[A-Z2-7]{55}","sub":"V[A-Z2-7]{55}"' <<<"$claims"
check "the claims carry wascap_revision 3" grep -q '"wascap_revision":3' <<<"$claims"
check "make_par --verify accepts the archive" "$make_par" --verify "$par"

issuer_before=$("$make_par" --verify "$par" | grep '^issuer:')
pack
check "a second run reuses the keys" test "$("$make_par" --verify "$par" | grep '^issuer:')" = "$issuer_before"
check "no seed is printed or packed" \
  bash -c "! grep -rqE 'S[AV][A-Z2-7]{56}' '$work/unpacked' '$work/make_par.log'"

# Tampering: a changed binary, then changed claims under the old signature.
mkdir "$work/tampered"
cp "$work/unpacked/claims.jwt" "$work/tampered/"
{ cat "$work/unpacked/$target.bin"; printf 'x'; } >"$work/tampered/$target.bin"
tar -czf "$work/binary-tampered.par.gz" -C "$work/tampered" claims.jwt "$target.bin"
check "make_par --verify rejects a changed binary" \
  bash -c "! '$make_par' --verify '$work/binary-tampered.par.gz'"
forged=$(printf '%s' "${claims/par-test/evil-corp}" | base64 -w0 | tr '+/' '-_' | tr -d '=')
IFS=. read -r _ _ jwt_signature <<<"$jwt"
printf '%s.%s.%s' "$jwt_header" "$forged" "$jwt_signature" >"$work/tampered/claims.jwt"
cp "$work/unpacked/$target.bin" "$work/tampered/$target.bin"
tar -czf "$work/claims-tampered.par.gz" -C "$work/tampered" claims.jwt "$target.bin"
check "make_par --verify rejects changed claims" \
  bash -c "! '$make_par' --verify '$work/claims-tampered.par.gz'"

# The provider needs a lattice: a real nats-server on a free loopback port.
nats_port=$(free_port)
http_port=$(free_port "$nats_port")
nats-server -a 127.0.0.1 -p "$nats_port" >/dev/null 2>&1 &
PIDS+=($!)
nats_url="nats://127.0.0.1:$nats_port"
url="http://127.0.0.1:$http_port/"
# The provider, like a host's, fails at once when no NATS answers, so wait until nats-server
# accepts connections (on a busy machine that can take over a second).
check "nats-server accepts connections on port $nats_port" wait_for "${PIDS[-1]}" 10 port_in_use "$nats_port"

# Run as the host does: empty environment, one base64 line, stdin closed.
host_data=$(printf '{"host_id":"NHOSTTEST","lattice_rpc_prefix":"default","lattice_rpc_url":"%s","provider_key":"http-server","instance_id":"par-test","link_definitions":[],"config":{"address":"127.0.0.1:%s"},"secrets":{}}' "$nats_url" "$http_port")
host_data_line "$host_data" | env -i "$work/unpacked/$target.bin" >"$work/provider.log" 2>&1 &
provider_pid=$!
PIDS+=("$provider_pid")
served=""
for _ in $(seq 50); do
  if body=$(curl -fsS --max-time 1 "$url" 2>/dev/null) && [[ $body == *"$expect"* ]]; then
    served=yes
    break
  fi
  if ! kill -0 "$provider_pid" 2>/dev/null; then break; fi
  sleep 0.2
done
if [[ -n $served ]]; then
  pass "the extracted binary serves $url under env -i"
else
  fail_check "the extracted binary serves $url under env -i"
  cat "$work/provider.log"
fi

passed=$(grep -c '^ok' "$work/results" || true)
echo "par_test: $passed passed, $failures failed"
(( failures == 0 ))
