#!/usr/bin/env bash
# The whole flow on loopback, without a wasmCloud host:
#
#   nats-server  <-  demo-component (serves wrpc:http/incoming-handler@0.1.0.handle)
#        ^
#        +------  http-server (the provider; host data piped on its stdin as a host does)
#                     ^
#                     +--- curl localhost:8080/ and localhost:8080/proxy
#
# Usage: demo/run.sh [BUILD_DIR]      (`make demo` runs `demo/run.sh build`)
#   DEMO_EXIT=1   print the answers, stop everything and exit (0 when both answers are right)
set -euo pipefail

BUILD=${1:-build}
PROVIDER_BIN="$BUILD/http-server"
COMPONENT_BIN="$BUILD/demo-component"
HTTP_PORT=8080

for bin in "$PROVIDER_BIN" "$COMPONENT_BIN"; do
  [[ -x "$bin" ]] || { echo "demo: $bin is missing; run 'make' first" >&2; exit 1; }
done
command -v nats-server >/dev/null || { echo "demo: nats-server is missing; run 'make deps'" >&2; exit 1; }
command -v curl >/dev/null || { echo "demo: curl is missing; run 'make deps'" >&2; exit 1; }

SCRIPT_NAME=demo
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

trap 'echo; echo "stopping..."; cleanup; echo "stopped."; exit 0' INT TERM
trap cleanup EXIT


# ---- ports ----

if port_in_use "$HTTP_PORT"; then
  taken=$HTTP_PORT
  HTTP_PORT=$(free_port "$taken")
  echo "NOTE: port $taken is already in use on this machine; the provider listens on $HTTP_PORT instead."
fi
NATS_PORT=$(free_port "$HTTP_PORT")
NATS_URL="nats://127.0.0.1:$NATS_PORT"

# ---- NATS ----

nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$LOGS/nats-server.log" 2>&1 &
PIDS+=($!)
wait_for "${PIDS[-1]}" 10 port_in_use "$NATS_PORT" || fail "nats-server did not start on $NATS_URL"
echo "nats-server       $NATS_URL"

# ---- the component ----

start_demo_component "$COMPONENT_BIN" "$NATS_URL"
echo "demo component    $COMPONENT_ID (lattice $LATTICE)"

# ---- the provider, started the way a wasmCloud host starts it ----

host_data_line "$(host_data "$PROVIDER_ID" "{\"address\":\"127.0.0.1:$HTTP_PORT\"}" "$(link "$PROVIDER_ID" default '{}')")" |
  "$PROVIDER_BIN" >"$LOGS/http-server.log" 2>&1 &
PIDS+=($!)

provider_answers() {
  curl -s --max-time 1 "http://127.0.0.1:$HTTP_PORT/" 2>/dev/null | grep -q "Hello from the provider!"
}
wait_for "${PIDS[-1]}" 15 provider_answers || fail "the provider did not answer on 127.0.0.1:$HTTP_PORT"
echo "provider          $PROVIDER_ID on 127.0.0.1:$HTTP_PORT (logs: $LOGS)"
echo

# ---- the two requests ----

ok=1
check() {  # $1 path, $2 expected answer
  local answer
  echo "\$ curl -s localhost:$HTTP_PORT$1"
  answer=$(curl -s --max-time 10 "localhost:$HTTP_PORT$1" || true)
  echo "$answer"
  if [[ "$answer" != "$2" ]]; then
    echo "demo: expected '$2'" >&2
    ok=0
  fi
}
check / "Hello from the provider!"
check /proxy "Hello from the component!"
echo
((ok)) || fail "a request got the wrong answer"

if [[ "${DEMO_EXIT:-0}" == 1 ]]; then
  cleanup
  exit 0
fi

echo "Running. Try: curl -s localhost:$HTTP_PORT/proxy/inspect   (or -d @file localhost:$HTTP_PORT/proxy to echo)"
echo "Press Ctrl-C to stop."
# Returns when a process exits on its own (an error) or a signal runs the trap.
while true; do
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || fail "a process stopped unexpectedly (pid $pid)"
  done
  sleep 1 &
  wait $! || true
done
