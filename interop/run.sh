#!/usr/bin/env bash
# The interop checks (`make interop`): the provider against peers nobody here wrote.
#
#   1. Rust's wRPC: the Wasm component (interop/component, componentize-js) served over NATS by
#      interop-wrpc-runner (wasmtime + wrpc-transport-nats + wrpc-interface-http), the provider
#      (build/http-server, host data on stdin) forwarding to it.
#   2. A wasmCloud 1.x host (interop-host = wasmcloud-host with a minimal main) on nats-server
#      with JetStream: the provider started from build/http-server.par.gz through the host's
#      control interface (interop-ctl = wasmcloud-control-interface), the host's component
#      (the same one, or for a host that serves only wasi:http 0.2.0 its build against that
#      version) started by the host, the link put as wadm.yaml puts it.
#   3. The user's flow: the README's "Deploying on wasmCloud" snippet, line by line, with wash
#      (from crates.io) against that host and wadm (interop-wadm = wadm::start_wadm with a
#      minimal main), deploying the repository's wadm.yaml; then the app's status, the
#      inventory, the archive's claims, delete (the provider ends, the port closes) and a second
#      deploy.
# Every check runs on nats-server $INTEROP_NATS_SERVER (wadm's streams need >= 2.10; Debian 12
# has 2.9.10), built from its Go module by `make interop-build`.
#
# Sections 2 and 3 run once per host version in INTEROP_HOSTS ("VERSION=BINARY=COMPONENT ...").
#
# Usage: interop/run.sh BUILD_DIR   (after `make interop-build`; the Makefile sets
# INTEROP_NATS_SERVER, INTEROP_WASH and INTEROP_HOSTS). Prints a table of checks and exits 1
# if any fails.
# KEEP_LOGS=1 keeps the logs of a passing run; NATS_TRACE=1 runs the nats-servers with -V
# (every message, payloads included, in the logs: for capturing bytes).
set -uo pipefail

BUILD=${1:-build}
CARGO_OUT="$BUILD/interop/cargo/release"
COMPONENT_WASM="$BUILD/interop/component/component.wasm"
PAR="$BUILD/http-server.par.gz"
NATS_SERVER=${INTEROP_NATS_SERVER:?the nats-server binary (make interop sets it)}
WASH=${INTEROP_WASH:?the wash binary (make interop sets it)}
read -r -a HOSTS <<<"${INTEROP_HOSTS:?host versions as VERSION=BINARY=COMPONENT (make interop sets it)}"
HOST_FILES=()
for host in "${HOSTS[@]}"; do
  IFS== read -r _ bin component <<<"$host"
  HOST_FILES+=("$bin" "$component")
done

for f in "$BUILD/http-server" "$PAR" "$COMPONENT_WASM" "${HOST_FILES[@]}" \
         "$CARGO_OUT/interop-wrpc-runner" "$CARGO_OUT/interop-ctl" "$CARGO_OUT/interop-wadm" \
         "$NATS_SERVER" "$WASH"; do
  [[ -e "$f" ]] || { echo "interop: $f is missing; run 'make interop'" >&2; exit 1; }
done

SCRIPT_NAME=interop
source "$(dirname "${BASH_SOURCE[0]}")/../demo/lib.sh"
trap cleanup EXIT
trap 'exit 1' INT TERM

abs() { (cd "$(dirname "$1")" && echo "$PWD/$(basename "$1")"); }
PAR_URL="file://$(abs "$PAR")"

# ---- the table ----

NAMES=()
RESULTS=()
DETAILS=()
record() {  # NAME PASS|FAIL|SKIP DETAIL
  NAMES+=("$1")
  RESULTS+=("$2")
  DETAILS+=("$3")
  printf '%-4s %s  %s\n' "$2" "$1" "$3" >&2
}
# check NAME COMMAND...: PASS when COMMAND succeeds; its last output line is the detail.
check() {
  local name=$1 out status
  shift
  out=$("$@" 2>&1)
  status=$?
  if ((status == 0)); then
    record "$name" PASS "$(tail -n 1 <<<"$out")"
  else
    record "$name" FAIL "$(tail -n 1 <<<"$out")"
    echo "$out" >"$LOGS/check-$(tr -c 'a-zA-Z0-9' _ <<<"$name").log"
  fi
}
print_table() {
  local i failed=0
  echo
  printf '| %-58s | %-6s | %s\n' "check" "result" "detail"
  printf '|%s|%s|%s\n' "$(printf -- '-%.0s' {1..60})" "--------" "--------"
  for i in "${!NAMES[@]}"; do
    printf '| %-58s | %-6s | %s\n' "${NAMES[i]}" "${RESULTS[i]}" "${DETAILS[i]}"
    [[ "${RESULTS[i]}" == FAIL ]] && failed=$((failed + 1))
  done
  echo
  echo "interop: $((${#NAMES[@]} - failed)) of ${#NAMES[@]} checks did not fail; $failed failed (logs: $LOGS)"
  return $((failed > 0))
}

# ---- request checks (shared by both peers) ----

UPLOAD="$LOGS/upload-64MiB.bin"
ECHO_UPLOAD="$LOGS/upload-8MiB.bin"
EXPECTED_DOWNLOAD="$LOGS/download-64MiB.bin"
head -c $((64 << 20)) /dev/urandom >"$UPLOAD"
head -c $((8 << 20)) "$UPLOAD" >"$ECHO_UPLOAD"
# The component's /proxy/bytes/N: a 65536-byte block of a..z repeated, the block repeated.
printf '%s' "$(printf 'abcdefghijklmnopqrstuvwxyz%.0s' {1..2521})" | head -c 65536 >"$LOGS/block.bin"
for ((i = 0; i < 1024; i++)); do cat "$LOGS/block.bin"; done >"$EXPECTED_DOWNLOAD"

expect_body() {  # URL EXPECTED
  local body
  body=$(curl -s --max-time 30 "$1") || { echo "curl failed: $1"; return 1; }
  [[ "$body" == "$2" ]] || { echo "got '${body:0:200}'"; return 1; }
  echo "$body"
}
expect_status() {  # URL STATUS
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 "$1")
  [[ "$status" == "$2" ]] || { echo "got status $status"; return 1; }
  echo "status $status"
}
upload_64mib() {  # URL of /proxy/count
  local start=$SECONDS answer
  answer=$(curl -s --max-time 300 -H 'content-type: application/octet-stream' --data-binary "@$UPLOAD" "$1") ||
    { echo "curl failed"; return 1; }
  [[ "$answer" == "67108864 bytes" ]] || { echo "component counted '$answer'"; return 1; }
  echo "the component read 67108864 bytes in $((SECONDS - start)) s"
}
# The echo streams both ways, but cpp-httplib sends no response byte before the whole request
# is read, so an echo larger than WRPC_HTTP_MAX_BUFFERED_BODY (16 MiB) is cut by design.
echo_8mib() {  # URL
  curl -s --max-time 300 -H 'content-type: application/octet-stream' --data-binary "@$ECHO_UPLOAD" \
    -o "$LOGS/echoed.bin" "$1" || { echo "curl failed"; return 1; }
  cmp -s "$ECHO_UPLOAD" "$LOGS/echoed.bin" || { echo "echo differs ($(stat -c %s "$LOGS/echoed.bin") bytes back)"; return 1; }
  echo "8388608 bytes echoed byte-exact"
}
download_64mib() {  # URL
  # Compared as it arrives, by a client that reads at memory speed: curl writing a file to this
  # machine's disk fell more than 16 MiB behind the component now and then, past the transport's
  # stall budget, and the provider cut the response as it must (README, Backpressure). A call
  # may hold 64 MiB (16 of its own, 48 borrowed from the shared overflow pool): the whole response.
  local start=$SECONDS status
  curl -s --max-time 300 "$1" | cmp -s "$EXPECTED_DOWNLOAD" -
  status=("${PIPESTATUS[@]}")
  ((status[1] == 0)) || { echo "download differs or is cut (curl exit ${status[0]})"; return 1; }
  ((status[0] == 0)) || { echo "curl failed (exit ${status[0]})"; return 1; }
  echo "67108864 bytes byte-exact in $((SECONDS - start)) s"
}
trailers() {  # URL: the trailer follows the last chunk
  local raw
  raw=$(curl -s --raw --max-time 30 "$1" | tr -d '\r') || { echo "curl failed"; return 1; }
  grep -q '^x-checksum: abc123$' <<<"$raw" && grep -q '^0$' <<<"$raw" ||
    { echo "no trailer: $(tr '\n' ' ' <<<"$raw" | head -c 200)"; return 1; }
  echo "x-checksum: abc123 after the last chunk"
}
request_checks() {  # PEER PORT
  local peer=$1 base="http://127.0.0.1:$2"
  check "$peer: GET /proxy answered by the Wasm component" expect_body "$base/proxy" "Hello from the component!"
  check "$peer: GET / answered by the provider" expect_body "$base/" "Hello from the provider!"
  check "$peer: 64 MiB upload (counted by the component)" upload_64mib "$base/proxy/count"
  check "$peer: 8 MiB echo byte-exact" echo_8mib "$base/proxy"
  check "$peer: 64 MiB download" download_64mib "$base/proxy/bytes/67108864"
  check "$peer: response trailers" trailers "$base/proxy/trailers"
  check "$peer: 404 from the component passed through" expect_status "$base/proxy/status/404" 404
  check "$peer: 500 from the component passed through" expect_status "$base/proxy/status/500" 500
  check "$peer: wasi:http error-code internal-error -> 500" expect_status "$base/proxy/error" 500
}

start_nats() {  # PORT [ARGS...]
  local port=$1
  shift
  ((${NATS_TRACE:-0})) && set -- "$@" -V
  "$NATS_SERVER" -a 127.0.0.1 -p "$port" "$@" >"$LOGS/nats-server-$port.log" 2>&1 &
  PIDS+=($!)
  wait_for "${PIDS[-1]}" 10 port_in_use "$port" || fail "nats-server did not start on port $port"
}

port_closed() { ! port_in_use "$1"; }
answers_provider() { curl -s --max-time 1 "http://127.0.0.1:$1/" | grep -q "Hello from the provider!"; }

# ---- 1. Rust's wRPC ----

NATS_PORT=$(free_port)
HTTP_PORT=$(free_port "$NATS_PORT")
NATS_URL="nats://127.0.0.1:$NATS_PORT"
start_nats "$NATS_PORT"

"$CARGO_OUT/interop-wrpc-runner" --nats "$NATS_URL" --prefix "$LATTICE.$COMPONENT_ID" "$COMPONENT_WASM" \
  >"$LOGS/wrpc-runner.log" 2>&1 &
PIDS+=($!)
RUNNER_PID=$!
if wait_for "$RUNNER_PID" 120 grep -q "interop-wrpc-runner: serving" "$LOGS/wrpc-runner.log"; then
  host_data_line "$(host_data "$PROVIDER_ID" "{\"address\":\"127.0.0.1:$HTTP_PORT\"}" "$(link "$PROVIDER_ID" default '{}')")" |
    env -i "$BUILD/http-server" \
    >"$LOGS/http-server-wrpc.log" 2>&1 &
  PIDS+=($!)
  if wait_for "${PIDS[-1]}" 15 answers_provider "$HTTP_PORT"; then
    request_checks "wrpc (Rust, wasmtime)" "$HTTP_PORT"
  else
    record "wrpc (Rust, wasmtime): provider started with host data" FAIL "no answer on $HTTP_PORT"
  fi
else
  record "wrpc (Rust, wasmtime): runner serves the component" FAIL "$(tail -n 1 "$LOGS/wrpc-runner.log")"
fi
stop_all

# ---- 2. wasmCloud host (per version: HOST_VERSION, HOST_BIN) ----

ctl() { "$CARGO_OUT/interop-ctl" --nats "$NATS_URL" --lattice "$LATTICE" "$@"; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# True once process $1 has ended: gone, or a zombie its parent has not reaped yet (the host
# reaps a killed provider 1-3 s late; `kill -0` would count that time).
ended() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 0
  [[ $state == Z* ]]
}
# Waits up to $2 ms for process $1 to end; prints the milliseconds it took.
wait_ended() {
  local start
  start=$(now_ms)
  until ended "$1"; do
    (($(now_ms) - start < $2)) || return 1
    sleep 0.02
  done
  echo $(($(now_ms) - start))
}
HOST_PID=
HOST_LOG=
start_host() {  # LOG_NAME: starts the host, sets HOST_PID, HOST_LOG and HOST_ID
  HOST_LOG="$LOGS/$1.log"  # the provider's stderr goes there too
  "$HOST_BIN" --nats "$NATS_URL" --lattice "$LATTICE" >"$LOGS/$1.out" 2>"$HOST_LOG" &
  HOST_PID=$!
  PIDS+=($HOST_PID)
  wait_for "$HOST_PID" 30 grep -q '^host_id=' "$LOGS/$1.out" || return 1
  HOST_ID=$(sed -n 's/^host_id=//p' "$LOGS/$1.out")
}
provider_pid() {  # the host's child process that has not ended
  local pid
  for pid in $(pgrep -P "$HOST_PID"); do ended "$pid" || { echo "$pid"; return; }; done
}
start_workloads() {  # provider from the archive (healthy), then the component
  ctl start-provider "$HOST_ID" "$PAR_URL" "$PROVIDER_ID" provider-config &&
    ctl scale-component "$HOST_ID" "$COMPONENT_URL" "$COMPONENT_ID" 1 &&
    echo "provider healthy, component running"
}
# The provider's own "provider stopped" lines (not the host's) in the host's log.
provider_stopped_lines() { grep -cE '^[0-9-]+T[0-9:.]+Z info provider stopped$' "$HOST_LOG"; }
# wasmcloud-host 0.27.1 sends its providers no shutdown request when the host stops: dropping
# a provider's task SIGKILLs it (kill_on_drop). What the provider owes: to be gone within 1 s of
# its host, also when the host hangs and is killed (then it notices and shuts down itself).
stop_host_and_wait() {
  local provider host_ms provider_ms how="" stopped_before
  provider=$(provider_pid)
  [[ -n "$provider" ]] || { echo "no provider process under the host"; return 1; }
  stopped_before=$(provider_stopped_lines)
  kill -TERM "$HOST_PID"
  if ! host_ms=$(wait_ended "$HOST_PID" 10000); then
    kill -KILL "$HOST_PID"
    how="the host still ran 10 s after SIGTERM and was killed; "
  fi
  provider_ms=$(wait_ended "$provider" 1000) || { echo "${how}provider $provider still running 1 s after its host"; return 1; }
  (($(provider_stopped_lines) > stopped_before)) && how+="the provider shut down by itself" || how+="the provider was killed by the host"
  echo "${host_ms:+host exited $host_ms ms after SIGTERM; }provider ended $provider_ms ms after the host ($how)"
}
stop_provider_within_1s() {
  local provider start took stopped_before
  provider=$(provider_pid)
  [[ -n "$provider" ]] || { echo "no provider process under the host"; return 1; }
  stopped_before=$(provider_stopped_lines)
  start=$(now_ms)
  ctl stop-provider "$HOST_ID" "$PROVIDER_ID" || return 1
  wait_ended "$provider" 10000 >/dev/null || { echo "provider $provider still running after 10 s"; return 1; }
  took=$(($(now_ms) - start))
  ((took <= 1000)) || { echo "provider ended only after $took ms"; return 1; }
  (($(provider_stopped_lines) > stopped_before)) || { echo "provider ended after $took ms without 'provider stopped': killed"; return 1; }
  sleep 0.5 # the host restarts a provider it did not mean to stop; it must not here
  [[ -z "$(provider_pid)" ]] || { echo "a provider process runs again under the host"; return 1; }
  port_closed "$P3" || { echo "port $P3 still open"; return 1; }
  echo "shut down ('provider stopped') and ended $took ms after stop_provider; nothing left running"
}
link_deleted() {
  ctl del-link "$PROVIDER_ID" wasi http || return 1
  wait_for "$HOST_PID" 3 port_closed "$P2" || { echo "the link's listener $P2 still open"; return 1; }
  answers_provider "$P1" || { echo "the provider config's listener $P1 does not answer"; return 1; }
  echo "link listener $P2 closed at once (connection refused, no hang); provider config listener $P1 answers"
}
config_update() {
  ctl put-config provider-config "address=127.0.0.1:$P3" || return 1
  wait_for "$HOST_PID" 10 answers_provider "$P3" || { echo "no listener on $P3 after the update"; return 1; }
  port_closed "$P1" || { echo "old listener $P1 still open"; return 1; }
  echo "listener moved from $P1 to $P3"
}

host_section() {
  local H="wasmCloud host $HOST_VERSION"
  NATS_PORT=$(free_port)
  P1=$(free_port "$NATS_PORT")             # the provider's own config
  P2=$(free_port "$NATS_PORT" "$P1")       # the link's source config (wadm.yaml's address)
  P3=$(free_port "$NATS_PORT" "$P1" "$P2") # the provider config after an update
  NATS_URL="nats://127.0.0.1:$NATS_PORT"
  start_nats "$NATS_PORT" -js -sd "$LOGS/jetstream-$HOST_VERSION"
  if start_host "host-$HOST_VERSION"; then
    record "$H: started" PASS "host $HOST_ID"
    ctl put-config provider-config "address=127.0.0.1:$P1" >/dev/null
    ctl put-config http-address "address=127.0.0.1:$P2" >/dev/null
    check "$H: provider from the archive healthy, component started" start_workloads
    check "$H: link put (wadm.yaml: source config address)" \
      ctl put-link "$PROVIDER_ID" "$COMPONENT_ID" wasi http incoming-handler http-address
    if wait_for "$HOST_PID" 10 answers_provider "$P2"; then
      request_checks "$H" "$P2"
    else
      record "$H: provider listens at the link's address" FAIL "no answer on $P2"
    fi
    check "$H: host stopped (SIGTERM) -> provider gone" stop_host_and_wait
    if start_host "host-$HOST_VERSION-restarted"; then
      check "$H restarted: provider and component started again" start_workloads
      check "$H restarted: GET /proxy (link from the lattice)" \
        wait_for "$HOST_PID" 10 expect_body "http://127.0.0.1:$P2/proxy" "Hello from the component!"
      check "$H: link deleted" link_deleted
      check "$H: provider config update moves the listener" config_update
      check "$H: provider stopped through the host within 1 s" stop_provider_within_1s
    else
      record "$H restarted" FAIL "$(tail -n 1 "$LOGS/host-$HOST_VERSION-restarted.log")"
    fi
  else
    record "$H: started" FAIL "$(tail -n 1 "$LOGS/host-$HOST_VERSION.log")"
  fi
  stop_all
}

# ---- 3. The user's flow: wash app deploy wadm.yaml on wadm ----

# The README's deploy snippet (the first sh block under "## Deploying on wasmCloud").
readme_deploy_lines() {
  awk '/^## Deploying on wasmCloud/ { section = 1 } section && /^```sh/ { block = 1; next }
       block && /^```/ { exit } block' README.md
}
# wadm.yaml with the component image pointed at the interop's Wasm component (the registry
# image cannot be pulled here): the only line that may differ. wash resolves the provider's
# `file://./build/...` against the manifest's folder, so that folder gets a `build` link to
# the repository's.
MANIFEST="$LOGS/wadm.yaml"
ln -s "$(abs build)" "$LOGS/build"
COMPONENT_IMAGE_LINE='        image: ghcr.io/wasmcloud/components/http-hello-world-rust:0.1.0'
manifest_copy() {
  grep -qxF "$COMPONENT_IMAGE_LINE" wadm.yaml || { echo "wadm.yaml has no line '$COMPONENT_IMAGE_LINE'"; return 1; }
  awk -v from="$COMPONENT_IMAGE_LINE" -v to="        image: $COMPONENT_URL" '$0 == from { $0 = to } 1' wadm.yaml >"$MANIFEST"
  local changed
  changed=$(diff wadm.yaml "$MANIFEST" | grep -c '^[<>]')
  ((changed == 2)) || { echo "the copy differs from wadm.yaml in $changed lines, not 1"; return 1; }
  cmp -s <(grep -vxF "$COMPONENT_IMAGE_LINE" wadm.yaml) <(grep -vxF "        image: $COMPONENT_URL" "$MANIFEST") ||
    { echo "the copy's other lines are not byte-equal"; return 1; }
  echo "only the component image differs: $COMPONENT_URL"
}
# wash as a user runs it, pointed at this lattice, with a HOME of its own (no ~/.wash touched).
wash_() {
  HOME="$LOGS/wash-home" RUST_BACKTRACE=0 WASMCLOUD_CTL_HOST=127.0.0.1 WASMCLOUD_CTL_PORT="$NATS_PORT" \
    WASMCLOUD_LATTICE="$LATTICE" "$WASH" "$@"
}
wadm_answers() { wash_ app list >/dev/null 2>&1; }
# The app's own status (its scalers' are "type"s).
app_deployed() { wash_ app list -o json 2>/dev/null | grep -q '"status": "deployed"'; }
APP_PORT=8080  # wadm.yaml's source config: address 0.0.0.0:8080
answers_on() {  # URL TEXT
  [[ "$(curl -s --max-time 2 "$1")" == "$2" ]]
}
# A README line, run as written (wash from the interop, wadm.yaml as its copy); prints its output.
# A command's output for a table cell: its first non-blank line, or all of it on one line.
first_line() { grep -m 1 '[^[:space:]]' <<<"$1" | head -c 200; }
one_line() { tr -s ' \n' ' ' <<<"$1" | head -c 300; }
readme_line() {  # LINE
  local line=$1 args
  read -r -a args <<<"$line"
  case "${args[0]}" in
    wash)
      args=("${args[@]/#wadm.yaml/$MANIFEST}")
      wash_ "${args[@]:1}" 2>&1 ;;
    curl) "${args[@]}" -s --max-time 10 ;;
    *) echo "not a wash or curl line"; return 1 ;;
  esac
}
readme_wash_line() {  # LINE: succeeds with its output
  local out
  out=$(readme_line "$1") || { echo "failed: $(first_line "$out")"; return 1; }
  first_line "$out"
}
readme_deploy() {  # LINE: wash app deploy, then wadm reports the app Deployed
  readme_wash_line "$1" >/dev/null || { readme_wash_line "$1"; return 1; }
  wait_for "$WADM_PID" 90 app_deployed || { echo "not Deployed after 90 s: $(wash_ app list 2>&1 | tail -n 2 | tr '\n' ' ')"; return 1; }
  echo "deployed; wash app list says Deployed"
}
readme_app_list() {  # LINE: a row for http v0.1.0, and the app Deployed (wash 0.43's table
  # prints the status as a wrapped struct, so that is read from its JSON)
  local out
  out=$(readme_line "$1") || { echo "failed: $(first_line "$out")"; return 1; }
  grep -qE '^ *http +v0\.1\.0 ' <<<"$out" || { echo "no 'http v0.1.0' row: $(one_line "$out")"; return 1; }
  app_deployed || { echo "the app is not Deployed"; return 1; }
  echo "http v0.1.0, status Deployed"
}
readme_curl() {  # LINE EXPECTED URL: waits until URL answers EXPECTED (the deployment
  # settling), then runs the line as written
  wait_for "$WADM_PID" 60 answers_on "$3" "$2" || true
  local out
  out=$(readme_line "$1") || { echo "curl failed"; return 1; }
  [[ "$out" == "$2" ]] || { echo "got '${out:0:200}'"; return 1; }
  echo "$out"
}
readme_delete() {  # LINE: the provider process ends and the port refuses within 2 s
  local provider start took
  provider=$(provider_pid)
  [[ -n "$provider" ]] || { echo "no provider process under the host before delete"; return 1; }
  start=$(now_ms)
  readme_wash_line "$1" >/dev/null || { readme_wash_line "$1"; return 1; }
  wait_ended "$provider" 2000 >/dev/null || { echo "provider $provider still running 2 s after delete"; return 1; }
  until port_closed "$APP_PORT"; do
    (($(now_ms) - start <= 2000)) || { echo "port $APP_PORT still open 2 s after delete"; return 1; }
    sleep 0.02
  done
  took=$(($(now_ms) - start))
  echo "provider ended and port $APP_PORT refused connections $took ms after delete"
}
app_status_shows_link() {
  local out
  out=$(wash_ app status http 2>&1) || { echo "wash app status failed: $(first_line "$out")"; return 1; }
  grep -qE -- '-\(wasi:http\)-> .*LinkScaler +Deployed' <<<"$out" ||
    { echo "no deployed wasi:http link in: $(one_line "$out")"; return 1; }
  grep -E -- '-\(wasi:http\)->' <<<"$out" | tr -s ' ' | head -n 1
}
inventory_lists_provider() {
  local out
  out=$(wash_ get inventory 2>&1) || { echo "wash get inventory failed: $(first_line "$out")"; return 1; }
  grep -q "$PROVIDER_ID" <<<"$out" || { echo "no $PROVIDER_ID in: $(one_line "$out")"; return 1; }
  grep "$PROVIDER_ID" <<<"$out" | tr -s ' ' | head -n 1
}
par_claims() {
  local out
  out=$(HOME="$LOGS/wash-home" RUST_BACKTRACE=0 "$WASH" par inspect "$PAR" 2>&1) ||
    { echo "wash par inspect failed: $(first_line "$out")"; return 1; }
  local want
  for want in http-server wrpc-http-provider 0.1.0 x86_64-linux; do
    grep -q -- "$want" <<<"$out" || { echo "no '$want' in: $(one_line "$out")"; return 1; }
  done
  echo "name http-server, vendor wrpc-http-provider, version 0.1.0, target x86_64-linux"
}
second_deploy() {
  wash_ app deploy "$MANIFEST" >/dev/null 2>&1 || { echo "deploy failed"; return 1; }
  wait_for "$WADM_PID" 90 app_deployed || { echo "not Deployed again"; return 1; }
  wait_for "$WADM_PID" 60 answers_on "http://127.0.0.1:$APP_PORT/proxy" "Hello from the component!" ||
    { echo "/proxy does not answer after the second deploy"; return 1; }
  wash_ app delete http >/dev/null 2>&1 || { echo "second delete failed"; return 1; }
  wait_for "$WADM_PID" 10 port_closed "$APP_PORT" || { echo "port $APP_PORT open after the second delete"; return 1; }
  echo "deployed, /proxy answered, deleted again"
}

wash_section() {
  local W="wash on host $HOST_VERSION"
  check "$W: wadm.yaml copy with the host's component" manifest_copy
  NATS_PORT=$(free_port)
  NATS_URL="nats://127.0.0.1:$NATS_PORT"
  start_nats "$NATS_PORT" -js -sd "$LOGS/jetstream-wash-$HOST_VERSION"
  if port_in_use "$APP_PORT"; then
    record "$W: port $APP_PORT (wadm.yaml's address) free" FAIL "something else listens on $APP_PORT"
  elif ! start_host "host-wash-$HOST_VERSION"; then
    record "$W: host started" FAIL "$(tail -n 1 "$LOGS/host-wash-$HOST_VERSION.log")"
  else
    WADM_NATS_SERVER="127.0.0.1:$NATS_PORT" "$CARGO_OUT/interop-wadm" >"$LOGS/wadm-$HOST_VERSION.log" 2>&1 &
    PIDS+=($!)
    WADM_PID=$!
    if ! wait_for "$WADM_PID" 60 wadm_answers; then
      record "$W: wadm answers wash app list" FAIL "$(tail -n 1 "$LOGS/wadm-$HOST_VERSION.log")"
    else
      while IFS= read -r readme; do
        command=$(sed -E 's/[[:space:]]*#.*$//' <<<"$readme")
        [[ -n "$command" ]] || continue
        name="$W: README: $command"
        case "$command" in
          make*) [[ -e "$PAR" ]] && record "$name" PASS "built by make interop-build" || record "$name" FAIL "no $PAR" ;;
          "wash up"*) record "$name" SKIP "stood in for by this host and wadm (wash up downloads them)" ;;
          "wash app deploy"*)
            check "$name" readme_deploy "$command"
            check "$W: wash app status shows the link" app_status_shows_link
            check "$W: wash get inventory lists the provider" inventory_lists_provider ;;
          "wash app list"*) check "$name" readme_app_list "$command" ;;
          "curl "*/proxy*) check "$name" readme_curl "$command" "Hello from the component!" "http://127.0.0.1:$APP_PORT/proxy" ;;
          "curl "*) check "$name" readme_curl "$command" "Hello from the provider!" "http://127.0.0.1:$APP_PORT/" ;;
          "wash app delete"*) check "$name" readme_delete "$command" ;;
          *) check "$name" readme_wash_line "$command" ;;
        esac
      done < <(readme_deploy_lines)
      check "$W: a second deploy works again" second_deploy
    fi
  fi
  stop_all
}

check "wash: wash par inspect shows the claims make par wrote" par_claims
for host in "${HOSTS[@]}"; do
  IFS== read -r HOST_VERSION HOST_BIN HOST_COMPONENT <<<"$host"
  COMPONENT_URL="file://$(abs "$HOST_COMPONENT")"
  host_section
  wash_section
done

record "Go: go.wasmcloud.dev/provider/wrpchttp client -> demo component" SKIP \
  "blocked: the Go module proxy refuses go.wasmcloud.dev (403, not on the module-host allowlist)"

print_table || { KEEP_LOGS=1; exit 1; }
