#!/usr/bin/env bash
# The benchmark of `make bench`: the provider against its anchors, in one run, all on loopback,
# on ONE nats-server and ONE component:
#
#   nats-server (monitoring on)  <-  demo-component (http-http_component)
#     ^  ^  ^  ^
#     |  |  |  +--  http-server: this provider, host data on stdin     <- wrk / curl  `/`, `/proxy`
#     |  |  +-----  Rust provider, path mode (wasmcloud-provider-http-server from crates.io,
#     |  |          its run() behind bench/rust-provider's main, host data on stdin)  <- `/proxy`
#     |  +--------  the same Rust provider in address mode (its default)             <- `/proxy`
#     +-----------  go-gateway (Go net/http + nats.go, bench/go-gateway)             <- `/proxy`
#
# wrk runs GET, POST 1 KiB and POST 64 KiB at 1, 8, 32 and 128 connections against each (the
# provider's `/` too: answered locally, the HTTP ceiling), recording req/s, p50, p99, the CPU
# of the forwarding process per 1,000 requests (/proc/PID/stat) and the NATS messages per
# request (nats-server's /varz and /connz before and after); then GET at 1,000 connections
# against each, with the peak threads and RSS of the process. One GET and one POST through each
# forwarder is tapped (bench/nats-probe tap) to count the round trips of a call. 1 GiB goes down
# and up through each with curl while the peak RSS of the forwarder is read from /proc. The
# request/reply and streaming ceilings of NATS on this machine are measured in the same run
# (bench/nats-probe).
# Writes bench/results.md and bench/throughput.png, and prints the results.
#
# With BENCH_HOST set (`make bench-host`), the component is the interop's Wasm component
# (componentize-js) served by a real wasmCloud host instead of build/demo-component: GET and
# POST 1 KiB only (each run at 128 connections, and the first after it, on a freshly started
# host), no streaming, no 1,000 connections; written to bench/results-host.md and
# bench/throughput-host.png.
#   BENCH_HOST, BENCH_CTL            the interop's host (wasmcloud-host 0.27.1) and control client
#   BENCH_COMPONENT_WASM             the Wasm component
#   BENCH_NATS_SERVER                a nats-server with JetStream (the host's config store needs it)
#
# Usage: bench/run.sh BUILD_DIR RUST_PROVIDER_BINARY     (`make bench` passes both)
#   BENCH_SECONDS=4     length of each wrk run (60 runs)
#   BENCH_KEEP_LOGS=1   keep the process logs and wrk outputs (kept anyway when a run fails)
set -euo pipefail

BUILD=${1:-build}
RUST_BIN=${2:-$BUILD/bench-cache/rust-target/release/rust-http-server-provider}
RUN_SECONDS=${BENCH_SECONDS:-4}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RESULTS="$BENCH_DIR/results.md"
PLOT="$BENCH_DIR/throughput.png"
HOST_BIN=${BENCH_HOST:-}
NATS_SERVER_BIN=nats-server
if [[ -n "$HOST_BIN" ]]; then
  RESULTS="$BENCH_DIR/results-host.md"
  PLOT="$BENCH_DIR/throughput-host.png"
  NATS_SERVER_BIN=${BENCH_NATS_SERVER:?BENCH_NATS_SERVER: a nats-server with JetStream}
  for f in "$HOST_BIN" "${BENCH_CTL:?BENCH_CTL: the interop control client}" \
    "${BENCH_COMPONENT_WASM:?BENCH_COMPONENT_WASM: the Wasm component}"; do
    [[ -e "$f" ]] || { echo "bench: $f is missing; run 'make bench-host'" >&2; exit 1; }
  done
fi

PROVIDER_BIN="$BUILD/http-server"
COMPONENT_BIN="$BUILD/demo-component"
GATEWAY_BIN="$BUILD/go-gateway"
PROBE_BIN="$BUILD/nats-probe"

CONNECTIONS=(1 8 32 128)
BODY_SIZES=(0 1024 65536)  # request body bytes; 0 is a GET
# In front of the host: within a minute of 128 connections the host stops answering any
# forwarder (its log: "future I/O dropped"; see README), so every run at HOST_FRESH_CONNS
# connections or more, and the first run after one, meets a freshly started host.
[[ -n "$HOST_BIN" ]] && BODY_SIZES=(0 1024)
HOST_FRESH_CONNS=128
STREAM_BYTES=$((1 << 30))
# Every column of the request table; `root` is the provider's `/`, the others forward `/proxy`.
SERVERS=(root ours rust rustaddr go)
FORWARDERS=(ours rust rustaddr go)
STREAMERS=(ours rust go)  # rustaddr streams through the same code as rust
[[ -n "$HOST_BIN" ]] && STREAMERS=()
declare -A NAME=(
  [root]="provider \`/\` (local answer)"
  [ours]="provider"
  [rust]="Rust provider, path mode"
  [rustaddr]="Rust provider, address mode"
  [go]="Go gateway"
)

# ---- tools ----

# Installs the Debian packages among "$@" that are missing.
install_missing() {
  local missing=() package sudo=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ "$(id -u)" == 0 ]] || sudo=(sudo)
  echo "bench: installing ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}
install_missing wrk gnuplot-nox curl nats-server jq nghttp2-client

for bin in "$PROVIDER_BIN" "$COMPONENT_BIN" "$GATEWAY_BIN" "$PROBE_BIN" "$RUST_BIN"; do
  [[ -x "$bin" ]] || { echo "bench: $bin is missing; run 'make bench'" >&2; exit 1; }
done
if [[ ! "$RUN_SECONDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "bench: BENCH_SECONDS must be a whole number of seconds, got '$RUN_SECONDS'" >&2
  exit 1
fi

SCRIPT_NAME=bench
KEEP_LOGS=${BENCH_KEEP_LOGS:-0}
source "$BENCH_DIR/../demo/lib.sh"

trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT

# CPU time (user + system, all threads) of process $1 so far, in clock ticks.
cpu_ticks() {
  local stat fields
  stat=$(<"/proc/$1/stat")
  # Fields after "pid (comm) ": state is the 1st, utime the 12th, stime the 13th.
  read -r -a fields <<<"${stat##*) }"
  echo $((fields[11] + fields[12]))
}
CLK_TCK=$(getconf CLK_TCK)

# Peak resident set size (VmHWM) of process $1, in KiB.
peak_rss_kib() {
  awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}

mib() {  # KiB -> MiB, one decimal
  awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'
}

# Resets the peak RSS of process $1 to its current RSS (Linux >= 4.0), so that the
# next reading covers only what runs in between.
reset_peak_rss() {
  echo 5 >"/proc/$1/clear_refs"
}

ratio() {  # $1 / $2 with two decimals, "-" without a denominator
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "") printf "%.2f", a / b; else printf "-" }'
}

# ---- start ----

NATS_PORT=$(free_port)
MONITOR_PORT=$(free_port "$NATS_PORT")
NATS_URL="nats://127.0.0.1:$NATS_PORT"
MONITOR_URL="http://127.0.0.1:$MONITOR_PORT"

nats_args=()
[[ -n "$HOST_BIN" ]] && nats_args=(-js -sd "$LOGS/jetstream")
"$NATS_SERVER_BIN" -a 127.0.0.1 -p "$NATS_PORT" -m "$MONITOR_PORT" "${nats_args[@]}" >"$LOGS/nats-server.log" 2>&1 &
PIDS+=($!)
NATS_PID=${PIDS[-1]}
wait_for "${PIDS[-1]}" 10 port_in_use "$NATS_PORT" || fail "nats-server did not start on $NATS_URL"
wait_for "${PIDS[-1]}" 10 port_in_use "$MONITOR_PORT" || fail "nats-server monitoring did not start on $MONITOR_URL"

# The cids of the server's client connections, one per line.
connection_ids() {
  curl -s --max-time 5 "$MONITOR_URL/connz?limit=1024" | jq -r '.connections[].cid' | sort
}
# Ids of connections that appeared since the list $1 (a file) was taken, space-separated.
new_connections() {
  connection_ids | comm -13 "$1" - | tr '\n' ' '
}
declare -A CONNS  # key -> cids of its NATS connections
declare -A PID URL

connection_ids >"$LOGS/cids"
# The host, then the Wasm component scaled on it through the control interface (up to 128
# instances at once: with one, as wadm.yaml asks, the host serves one call at a time and calls
# at 8 connections and more wait past every timeout); the component's CPU is the host's.
HOST_STARTS=0
start_host() {
  HOST_STARTS=$((HOST_STARTS + 1))
  local log="$LOGS/host-$HOST_STARTS"
  "$HOST_BIN" --nats "$NATS_URL" --lattice "$LATTICE" >"$log.out" 2>"$log.log" &
  PIDS+=($!)
  wait_for "${PIDS[-1]}" 30 grep -q '^host_id=' "$log.out" || fail "the wasmCloud host did not start"
  HOST_ID=$(sed -n 's/^host_id=//p' "$log.out")
  COMPONENT_PID=${PIDS[-1]}
  "$BENCH_CTL" --nats "$NATS_URL" --lattice "$LATTICE" scale-component "$HOST_ID" \
    "file://$(cd "$(dirname "$BENCH_COMPONENT_WASM")" && pwd)/$(basename "$BENCH_COMPONENT_WASM")" "$COMPONENT_ID" 128 \
    >"$LOGS/scale.log" 2>&1 || fail "the host did not start the component: $(cat "$LOGS/scale.log")"
}
if [[ -n "$HOST_BIN" ]]; then
  start_host
else
  start_demo_component "$COMPONENT_BIN" "$NATS_URL"
  COMPONENT_PID=${PIDS[-1]}
fi
CONNS[component]=$(new_connections "$LOGS/cids")

answers() {  # $1 URL, $2 expected body
  [[ "$(curl -s --max-time 2 "$1" 2>/dev/null)" == "$2" ]]
}

# Starts forwarder $1: "$2..." is the command, host data (or "") on stdin; waits until it
# answers `/proxy` as the component does and echoes a 64 KiB POST.
start_forwarder() {
  local key=$1 host_data=$2
  shift 2
  connection_ids >"$LOGS/cids"
  if [[ -n "$host_data" ]]; then
    host_data_line "$host_data" | "$@" >"$LOGS/$key.log" 2>&1 &
  else
    "$@" </dev/null >"$LOGS/$key.log" 2>&1 &
  fi
  PIDS+=($!)
  PID[$key]=${PIDS[-1]}
  wait_for "${PID[$key]}" 30 answers "${URL[$key]}/proxy" "Hello from the component!" ||
    fail "${NAME[$key]} did not answer /proxy on ${URL[$key]}"
  CONNS[$key]=$(new_connections "$LOGS/cids")
  curl -s --max-time 10 -H 'Content-Type: application/octet-stream' --data-binary "@$LOGS/echo.bin" "${URL[$key]}/proxy" |
    cmp -s - "$LOGS/echo.bin" || fail "POST ${URL[$key]}/proxy does not echo a 64 KiB body"
}
head -c 65536 /dev/urandom >"$LOGS/echo.bin"

ports=("$NATS_PORT" "$MONITOR_PORT")
for key in ours rust rustaddr go; do
  port=$(free_port "${ports[@]}")
  ports+=("$port")
  URL[$key]="http://127.0.0.1:$port"
done
URL[root]=${URL[ours]}
ADDRESS_OURS=${URL[ours]#http://} ADDRESS_RUST=${URL[rust]#http://} ADDRESS_RUSTADDR=${URL[rustaddr]#http://}

# The provider: max_content_len admits the 1 GiB upload; timeout_ms: the component answers
# /proxy/count only after the whole body, so the response head of an upload comes after all of it.
start_forwarder ours "$(host_data http-http_provider \
  "{\"address\":\"$ADDRESS_OURS\",\"max_content_len\":\"2G\",\"timeout_ms\":\"60000\"}" \
  "$(link http-http_provider default '{}')" warn)" "$PROVIDER_BIN"
PID[root]=${PID[ours]}
answers "${URL[root]}/" "Hello from the provider!" || fail "the provider's / gives a wrong answer"

# The Rust provider in path mode: one listener, exact paths from the links' source_config;
# HTTP/1 keep-alive on. Path mode matches whole paths, so the streaming paths get links too.
RUST_LINKS="$(link http-rust_path default '{"path":"/proxy"}'),$(link http-rust_path bytes \
  "{\"path\":\"/proxy/bytes/$STREAM_BYTES\"}"),$(link http-rust_path count '{"path":"/proxy/count"}')"
start_forwarder rust "$(host_data http-rust_path \
  "{\"routing_mode\":\"path\",\"default_address\":\"$ADDRESS_RUST\",\"timeout_ms\":\"60000\"}" "$RUST_LINKS" warn)" "$RUST_BIN"

# The Rust provider in address mode, as wasmCloud runs it without routing_mode: a listener per
# link; its HTTP/1 server closes every connection after one response (keep-alive off in 0.27).
start_forwarder rustaddr "$(host_data http-rust_address '{}' \
  "$(link http-rust_address default "{\"address\":\"$ADDRESS_RUSTADDR\",\"timeout_ms\":\"60000\"}")" warn)" "$RUST_BIN"

start_forwarder go "" "$GATEWAY_BIN" --nats "$NATS_URL" --lattice "$LATTICE" --target "$COMPONENT_ID" \
  --address "${URL[go]#http://}"

# The first seconds after a host starts are slow for whichever forwarder meets them (GET at 1
# connection, the first run after the start, always this provider's: 139-404 req/s in 4 of 5
# runs, where later runs get 650-730), so after each start every forwarder gets 2 s at 1
# connection, unmeasured (the next run: 726 req/s).
warm_host() {
  local key
  for key in "${FORWARDERS[@]}"; do
    wrk -t1 -c1 -d2s --timeout 10s "${URL[$key]}/proxy" >"$LOGS/wrk-warm-up-$key.txt" 2>&1 ||
      fail "the warm-up through ${NAME[$key]} failed: $(cat "$LOGS/wrk-warm-up-$key.txt")"
  done
}
[[ -n "$HOST_BIN" ]] && warm_host

echo "bench: provider ${URL[ours]}, Rust ${URL[rust]} (path) ${URL[rustaddr]} (address)," \
  "Go gateway ${URL[go]}, nats $NATS_URL; logs in $LOGS" >&2
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- NATS: the ceiling, and the messages of one call ----

declare -A CEILING CEILING_P50
for requesters in 1 32; do
  out=$("$PROBE_BIN" ceiling --nats "$NATS_URL" --requesters "$requesters" --seconds "$RUN_SECONDS") ||
    fail "nats-probe ceiling failed: $out"
  CEILING[$requesters]=$(sed -n 's/.*round_trips_per_s=\([0-9]*\).*/\1/p' <<<"$out")
  CEILING_P50[$requesters]=$(sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' <<<"$out")
  echo "bench: NATS request/reply ceiling, $requesters requesters: ${CEILING[$requesters]}/s, p50 ${CEILING_P50[$requesters]} us" >&2
done

# Taps the messages of one request "$3..." (curl arguments) through forwarder $1 into
# $LOGS/tap-$1-$2.txt, and keeps "forwarder_msgs component_msgs round_trips" in TAP: a message
# is the component's when it goes to the caller's reply inbox (the invocation's reply subject,
# or below it); round trips are the runs of forwarder messages before the first result message
# (each run after the first waits for the component's handshake): the trips to the response head.
declare -A TAP
tap_call() {
  local key=$1 label=$2
  shift 2
  "$PROBE_BIN" tap --nats "$NATS_URL" >"$LOGS/tap-$key-$label.txt" 2>"$LOGS/tap.log" &
  local tap_pid=$!
  wait_for "$tap_pid" 10 grep -q listening "$LOGS/tap.log" || fail "nats-probe tap did not start"
  curl -s -o /dev/null --max-time 10 "$@" || fail "tapped request $* failed"
  sleep 0.3  # let the last messages of the call cross the server
  kill -TERM "$tap_pid"
  wait "$tap_pid" || true
  TAP[$key $label]=$(awk '
    !inbox && $1 ~ /\.handle$/ { inbox = $2 }
    !inbox { next }
    {
      mine = ($1 == inbox || index($1, inbox ".") == 1) ? "component" : "forwarder"
      count[mine]++
      if ($1 == inbox ".results") answered = 1
      if (!answered && mine == "forwarder" && last != "forwarder") trips++
      last = mine
    }
    END { printf "%d %d %d\n", count["forwarder"], count["component"], trips }' "$LOGS/tap-$key-$label.txt")
  echo "bench: one $label call through ${NAME[$key]}: forwarder, component messages, round trips: ${TAP[$key $label]}" >&2
}
head -c 1024 /dev/zero | tr '\0' x >"$LOGS/post1k.bin"
# A tap that saw no invocation (it can miss the call on a busy machine) is taken again.
tap_until_seen() {
  local key=$1 label=$2 attempt
  for attempt in 1 2 3; do
    tap_call "$@"
    [[ "${TAP[$key $label]}" != "0 0 0" ]] && return 0
  done
}
for key in "${FORWARDERS[@]}"; do
  tap_until_seen "$key" GET "${URL[$key]}/proxy"
  tap_until_seen "$key" POST "${URL[$key]}/proxy" -H 'Content-Type: application/octet-stream' --data-binary "@$LOGS/post1k.bin"
done

# ---- streaming: 1 GiB each way through /proxy ----

declare -A STREAM_RATE STREAM_PEAK STREAM_NOTE

# Records one streaming run: $1 key, $2 pid, $3 HTTP status, $4 bytes that arrived (at the
# client going down, at the component going up; "" when unknown), $5 seconds, $6 a note.
record_stream() {
  local key=$1 pid=$2 code=$3 moved=$4 seconds=$5 note=$6
  STREAM_PEAK[$key]=$(peak_rss_kib "$pid")
  STREAM_RATE[$key]=$(awk -v b="${moved:-0}" -v t="$seconds" 'BEGIN { printf "%.0f", (t > 0) ? b / t / 1048576 : 0 }')
  STREAM_NOTE[$key]=ok
  if [[ "$code" != 200 || "$moved" != "$STREAM_BYTES" ]]; then
    STREAM_NOTE[$key]="FAILED: HTTP $code, ${moved:-?} of $STREAM_BYTES bytes${note:+; $note}"
    STREAM_RATE[$key]=0
  fi
  echo "bench: stream $key: ${STREAM_RATE[$key]} MiB/s, peak RSS $(mib "${STREAM_PEAK[$key]}") MiB, ${STREAM_NOTE[$key]}" >&2
}

# $1 forwarder key.
stream_down() {
  local code bytes seconds
  reset_peak_rss "${PID[$1]}"
  read -r code bytes seconds < <(curl -s -o /dev/null --max-time 120 \
    -w '%{http_code} %{size_download} %{time_total}\n' "${URL[$1]}/proxy/bytes/$STREAM_BYTES" || true)
  record_stream "$1 down" "${PID[$1]}" "$code" "$bytes" "$seconds" ""
}

# POSTs file $1 ("-": stdin, chunked) to URL $2; prints the answer, a newline, then
# "HTTP_CODE BYTES SECONDS". Expect is off so that no 100-continue wait is part of the time.
upload() {
  curl -s --max-time 120 -X POST -H 'Content-Type: application/octet-stream' -H 'Expect:' \
    -T "$1" -w '\n%{http_code} %{size_upload} %{time_total}' "$2"
}

# $1 forwarder key, $2 "length" (Content-Length, from a sparse file) or "chunked"
# (Transfer-Encoding: chunked, from a pipe).
stream_up() {
  local key=$1 out answer code seconds moved=""
  reset_peak_rss "${PID[$key]}"
  if [[ "$2" == chunked ]]; then
    out=$(head -c "$STREAM_BYTES" /dev/zero | upload - "${URL[$key]}/proxy/count") || true
  else
    out=$(upload "$LOGS/zero.bin" "${URL[$key]}/proxy/count") || true
  fi
  answer=${out%$'\n'*}
  read -r code _ seconds <<<"${out##*$'\n'}"
  # The component answers "N bytes": what it received. Any other answer is the error.
  local note="answer '${answer//$'\n'/ }'"
  if [[ "$answer" =~ ^([0-9]+)\ bytes$ ]]; then
    moved=${BASH_REMATCH[1]} note=""
  fi
  record_stream "$key up $2" "${PID[$key]}" "$code" "$moved" "$seconds" "$note"
}

if ((${#STREAMERS[@]} > 0)); then
# The streaming ceiling, just before the transfers: what nats-server moves one way on this machine.
out=$("$PROBE_BIN" stream --nats "$NATS_URL" --bytes "$STREAM_BYTES") || fail "nats-probe stream failed: $out"
STREAM_CEILING=$(sed -n 's/.*mib_per_s=\([0-9]*\).*/\1/p' <<<"$out")
echo "bench: NATS streaming ceiling: $STREAM_CEILING MiB/s" >&2

truncate -s "$STREAM_BYTES" "$LOGS/zero.bin"
# Read once before any upload: the first read of a fresh sparse GiB costs the reader seconds of
# kernel time on this machine (9 s once), which would be charged to whichever forwarder goes first.
cat "$LOGS/zero.bin" >/dev/null
for key in "${STREAMERS[@]}"; do
  stream_down "$key"
  stream_up "$key" length
  stream_up "$key" chunked
done
rm -f "$LOGS/zero.bin"
fi

# ---- request/response: wrk ----

declare -A RPS P50 P99 CPU_PER_1K NATS_CPU_PER_1K COMPONENT_CPU_PER_1K MSGS FWD_MSGS ERRORS

per_1k() {  # $1 clock ticks, $2 requests -> CPU seconds per 1,000 requests
  awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN { printf "%.3f", (n > 0) ? t / hz / n * 1000 : 0 }'
}

# Converts wrk's output on stdin to "req/s requests p50_ms p99_ms non2xx socket_errors".
parse_wrk() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000
      if (v ~ /ms$/) return v + 0
      if (v ~ /s$/) return v * 1000
      if (v ~ /m$/) return v * 60000
      return v
    }
    / requests in / { requests = $1 }
    /^Requests\/sec:/ { rps = $2 }
    /^ +50% / { p50 = ms($2) }
    /^ +99% / { p99 = ms($2) }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(/,/, ""); socket = $4 + $6 + $8 + $10; detail = $0; sub(/^ *Socket errors: */, "", detail) }
    END { printf "%s %s %.3f %.3f %d %d %s\n", rps, requests, p50, p99, non2xx, socket, detail }'
}

# Messages the server has received so far: "total from_connections_$1..." (cids).
messages_in() {
  curl -s --max-time 5 "$MONITOR_URL/connz?limit=1024" |
    jq -r --arg cids "$*" '($cids | split(" ") | map(select(. != "") | tonumber)) as $mine |
      [([.connections[].in_msgs] | add), ([.connections[] | select(.cid as $c | $mine | index($c)) | .in_msgs] | add // 0)] | @tsv'
}

# $1 server, $2 body bytes, $3 connections.
run_wrk() {
  local server=$1 body=$2 conns=$3 url pid key out ticks
  url="${URL[$server]}/proxy"
  [[ "$server" == root ]] && url="${URL[root]}/"
  pid=${PID[$server]}
  key="$server $body $conns"
  local args=(-t"$((conns < 2 ? conns : 2))" -c"$conns" -d"${RUN_SECONDS}s" --latency --timeout 10s)
  if ((body > 0)); then args+=(-s "$BENCH_DIR/wrk_post.lua"); fi
  kill -0 "$pid" 2>/dev/null || fail "the process behind $url (pid $pid) is gone"
  local before after nats_ticks component_ticks
  before=$(messages_in "${CONNS[$server]:-}")
  ticks=$(cpu_ticks "$pid") nats_ticks=$(cpu_ticks "$NATS_PID") component_ticks=$(cpu_ticks "$COMPONENT_PID")
  out=$(BENCH_BODY_BYTES=$body wrk "${args[@]}" "$url" 2>&1) || fail "wrk failed on $url: $out"
  ticks=$(($(cpu_ticks "$pid") - ticks))
  nats_ticks=$(($(cpu_ticks "$NATS_PID") - nats_ticks))
  component_ticks=$(($(cpu_ticks "$COMPONENT_PID") - component_ticks))
  after=$(messages_in "${CONNS[$server]:-}")
  printf '%s\n' "$out" >"$LOGS/wrk-$server-$body-$conns.txt"

  local rps requests p50 p99 non2xx socket detail
  read -r rps requests p50 p99 non2xx socket detail < <(printf '%s\n' "$out" | parse_wrk)
  [[ -n "$rps" && -n "$requests" ]] || fail "could not read wrk's output for $url: $out"
  RPS[$key]=$rps P50[$key]=$p50 P99[$key]=$p99
  CPU_PER_1K[$key]=$(per_1k "$ticks" "$requests")
  NATS_CPU_PER_1K[$key]=$(per_1k "$nats_ticks" "$requests")
  COMPONENT_CPU_PER_1K[$key]=$(per_1k "$component_ticks" "$requests")
  local all_msgs forwarder_msgs
  read -r all_msgs forwarder_msgs < <(awk -v b="$before" -v a="$after" -v n="$requests" 'BEGIN {
    split(b, x, "\t"); split(a, y, "\t"); printf "%.2f %.2f\n", (y[1] - x[1]) / n, (y[2] - x[2]) / n }')
  MSGS[$key]=$all_msgs FWD_MSGS[$key]=$forwarder_msgs
  ERRORS[$key]=0
  if ((non2xx > 0 || socket > 0)); then
    ERRORS[$key]="non-2xx $non2xx; socket $socket ($detail)"
  fi
  echo "bench: $server $(request_name "$body") c=$conns: $rps req/s, p50 $p50 ms, p99 $p99 ms," \
    "${MSGS[$key]} msgs/req, errors ${ERRORS[$key]}" >&2
}

request_name() {  # $1 body bytes
  case "$1" in
  0) echo "GET" ;;
  *) if (($1 % 1048576 == 0)); then echo "POST $(($1 / 1048576)) MiB"
     elif (($1 % 1024 == 0)); then echo "POST $(($1 / 1024)) KiB"
     else echo "POST $1 B"; fi ;;
  esac
}

# Each point runs through every server back to back, so that the machine's load (shared with
# other work) weighs on all of them alike. The Go gateway runs last in each point: when wrk
# stops, it abandons its queued calls, and the component's workers for them wait for params.
# In front of the host, a run at HOST_FRESH_CONNS connections (and the first run after one) gets
# a new host: the old one is stopped (SIGTERM; SIGKILL after 10 s), a new one started with the
# component, and every forwarder answers /proxy through it before the run.
HOST_STRAINED=
HOST_KILLS=0
fresh_host() {
  kill -TERM "$COMPONENT_PID" 2>/dev/null || true
  (sleep 10 && kill -KILL "$COMPONENT_PID" 2>/dev/null) &
  local killer=$!
  local status=0
  wait "$COMPONENT_PID" 2>/dev/null || status=$?
  if ((status == 137)); then HOST_KILLS=$((HOST_KILLS + 1)); fi  # it hung on SIGTERM
  kill "$killer" 2>/dev/null || true
  start_host
  local key
  for key in "${FORWARDERS[@]}"; do
    wait_for "${PID[$key]}" 30 answers "${URL[$key]}/proxy" "Hello from the component!" ||
      fail "${NAME[$key]} did not answer /proxy through the new host"
  done
  warm_host
  HOST_STRAINED=
}
for body in "${BODY_SIZES[@]}"; do
  for conns in "${CONNECTIONS[@]}"; do
    for server in "${SERVERS[@]}"; do
      if [[ -n "$HOST_BIN" && "$server" != root ]]; then
        if ((conns >= HOST_FRESH_CONNS)) || [[ -n "$HOST_STRAINED" ]]; then fresh_host; fi
        if ((conns >= HOST_FRESH_CONNS)); then HOST_STRAINED=1; fi
      fi
      run_wrk "$server" "$body" "$conns"
    done
  done
done
[[ -n "$HOST_STRAINED" ]] && fresh_host
PROVIDER_PEAK_AFTER_WRK=$(peak_rss_kib "${PID[ours]}")

# ---- 1,000 connections: threads and memory ----
# GET at WIDE_CONNS connections through each server, its threads sampled every 100 ms and its
# peak RSS read after: what a wide crowd of clients costs each design.
WIDE_CONNS=1000
ulimit -n "$(ulimit -Hn)"
declare -A WIDE_RPS WIDE_P99 WIDE_THREADS WIDE_RSS WIDE_ERRORS
run_wide() {
  local server=$1 url pid out peak=0 threads
  url="${URL[$server]}/proxy"
  [[ "$server" == root ]] && url="${URL[root]}/"
  pid=${PID[$server]}
  reset_peak_rss "$pid"
  wrk -t2 -c"$WIDE_CONNS" -d"${RUN_SECONDS}s" --latency --timeout 10s "$url" >"$LOGS/wrk-wide-$server.txt" 2>&1 &
  local wrk_pid=$!
  while kill -0 "$wrk_pid" 2>/dev/null; do
    threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")
    ((threads > peak)) && peak=$threads
    sleep 0.1
  done
  wait "$wrk_pid" || fail "wrk failed on $url: $(cat "$LOGS/wrk-wide-$server.txt")"
  local rps requests p50 p99 non2xx socket detail
  read -r rps requests p50 p99 non2xx socket detail < <(parse_wrk <"$LOGS/wrk-wide-$server.txt")
  WIDE_RPS[$server]=$rps WIDE_P99[$server]=$p99 WIDE_THREADS[$server]=$peak
  WIDE_RSS[$server]=$(peak_rss_kib "$pid")
  WIDE_ERRORS[$server]=0
  ((non2xx > 0 || socket > 0)) && WIDE_ERRORS[$server]="non-2xx $non2xx; socket $socket ($detail)"
  echo "bench: $server GET c=$WIDE_CONNS: $rps req/s, p99 $p99 ms, peak threads $peak," \
    "peak RSS $(mib "${WIDE_RSS[$server]}") MiB, errors ${WIDE_ERRORS[$server]}" >&2
}
[[ -n "$HOST_BIN" ]] || for server in "${SERVERS[@]}"; do run_wide "$server"; done

# ---- HTTP/2: h2load ----
# GET /proxy over h2c (prior knowledge) through the two forwarders that speak HTTP/2: this
# provider and the Rust provider (path mode, hyper-util's auto builder). STREAMS concurrent
# streams in all, over 1 and over 8 connections (streams per connection: STREAMS / connections).
# p99 from h2load's per-request log; peak RSS (VmHWM) over each server's runs.
H2_SERVERS=(ours rust)
H2_POINTS=("1 1" "1 8" "1 32" "1 128" "8 8" "8 32" "8 128")  # connections, streams in all
declare -A H2_RPS H2_P99 H2_ERRORS H2_RSS
run_h2load() {
  local server=$1 conns=$2 streams=$3 per out log rps done_ok failed
  per=$((streams / conns))
  log="$LOGS/h2load-$server-$conns-$streams.log"
  out=$(h2load -D "$RUN_SECONDS" -c "$conns" -m "$per" -t 1 --log-file="$log" "${URL[$server]}/proxy" 2>&1) ||
    fail "h2load failed on ${URL[$server]}/proxy: $out"
  rps=$(awk '/^finished in/ { gsub(",", "", $4); print int($4) }' <<<"$out")
  read -r done_ok failed < <(awk '/^requests:/ { print $8, $10 }' <<<"$out")
  H2_RPS[$server $conns $streams]=$rps
  H2_P99[$server $conns $streams]=$(awk '{ print $3 / 1000 }' "$log" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", v[int(NR * 0.99 + 0.999)] ; else print "-" }')
  H2_ERRORS[$server $conns $streams]=$failed
  echo "bench: $server h2 c=$conns streams=$streams: $rps req/s, p99 ${H2_P99[$server $conns $streams]} ms,"     "$done_ok succeeded, $failed failed" >&2
}
if [[ -z "$HOST_BIN" ]]; then
  h2_answers() {  # $1 URL, $2 expected body
    [[ "$(curl -s --http2-prior-knowledge --max-time 2 "$1" 2>/dev/null)" == "$2" ]]
  }
  for server in "${H2_SERVERS[@]}"; do
    # The Go gateway's 1,000 connections may have made nats-server drop a slow client just
    # before: its forwarder reconnects first.
    wait_for "${PID[$server]}" 30 h2_answers "${URL[$server]}/proxy" "Hello from the component!" ||
      fail "${NAME[$server]} does not answer /proxy over h2c"
    reset_peak_rss "${PID[$server]}"
    for point in "${H2_POINTS[@]}"; do run_h2load "$server" $point; done
    H2_RSS[$server]=$(peak_rss_kib "${PID[$server]}")
  done
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ----

at_least() {  # "met" when $1 >= $2
  awk -v a="$1" -v b="$2" 'BEGIN { print ((a != "-" && a >= b) ? "met" : "NOT met") }'
}
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a < b) ? a : b }'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b) ? a : b }'; }

RUST_VERSION=$(awk '/^name = "wasmcloud-provider-http-server"$/ { getline; gsub(/[^0-9.]/, ""); print }' \
  "$BENCH_DIR/rust-provider/Cargo.lock")
ASYNC_NATS_VERSION=$(awk '/^name = "async-nats"$/ { getline; gsub(/[^0-9.]/, ""); print }' \
  "$BENCH_DIR/rust-provider/Cargo.lock" | paste -sd/)
WRPC_NATS_VERSION=$(awk '/^name = "wrpc-transport-nats"$/ { getline; gsub(/[^0-9.]/, ""); print }' \
  "$BENCH_DIR/rust-provider/Cargo.lock" | paste -sd/)
VERSIONS="source $(git -C "$BENCH_DIR/.." describe --always --dirty 2>/dev/null || echo unknown)"
VERSIONS+="; $(g++ --version 2>/dev/null | head -n 1 || true)"
VERSIONS+="; wasmcloud-provider-http-server $RUST_VERSION (async-nats $ASYNC_NATS_VERSION, wrpc-transport-nats $WRPC_NATS_VERSION), $(rustc --version 2>/dev/null || echo rustc unknown)"
VERSIONS+="; Go gateway and nats-probe built with $(go version 2>/dev/null | awk '{ print $3 }' || true) on Debian's nats.go"
VERSIONS+="; nats-server $(nats-server --version | awk '{ print $2 }')"
VERSIONS+="; wrk $(wrk --version 2>&1 | awk 'NR == 1 { print $2 }' || true); curl $(curl --version | awk 'NR == 1 { print $2 }')"
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)

requests_table() {
  echo "| Request | Conns | Server | req/s | p50 ms | p99 ms | CPU s / 1k req: forwarder; nats-server; component | NATS msgs / req: all; from the forwarder | Errors |"
  echo "|---|--:|---|--:|--:|--:|--:|--:|---|"
  local body conns server key msgs
  for body in "${BODY_SIZES[@]}"; do
    for conns in "${CONNECTIONS[@]}"; do
      for server in "${SERVERS[@]}"; do
        key="$server $body $conns" msgs="${MSGS[$key]}; ${FWD_MSGS[$key]}"
        [[ "$server" == root ]] && msgs=""
        echo "| $(request_name "$body") | $conns | ${NAME[$server]} | ${RPS[$key]} | ${P50[$key]} | ${P99[$key]} |" \
          "${CPU_PER_1K[$key]}; ${NATS_CPU_PER_1K[$key]}; ${COMPONENT_CPU_PER_1K[$key]} | $msgs | ${ERRORS[$key]} |"
      done
    done
  done
}

# The provider against each anchor, point by point.
ratios_table() {
  echo "| Request | Conns | provider req/s | Rust (path) | Rust (address) | Go gateway | : Rust (best) | : Go | provider p99 ms | Rust p99 (best) | p99 : Rust |"
  echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
  local body conns k best best_p99
  for body in "${BODY_SIZES[@]}"; do
    for conns in "${CONNECTIONS[@]}"; do
      k="$body $conns"
      best=$(max "${RPS[rust $k]}" "${RPS[rustaddr $k]}")
      best_p99=$(min "${P99[rust $k]}" "${P99[rustaddr $k]}")
      echo "| $(request_name "$body") | $conns | ${RPS[ours $k]} | ${RPS[rust $k]} | ${RPS[rustaddr $k]} | ${RPS[go $k]} |" \
        "$(ratio "${RPS[ours $k]}" "$best") | $(ratio "${RPS[ours $k]}" "${RPS[go $k]}") |" \
        "${P99[ours $k]} | $best_p99 | $(ratio "${P99[ours $k]}" "$best_p99") |"
    done
  done
}

stream_table() {
  echo "| Through | Direction | MiB/s | : NATS ceiling | Peak RSS MiB | Result |"
  echo "|---|---|--:|--:|--:|---|"
  local key direction
  for key in "${STREAMERS[@]}"; do
    for direction in down "up length" "up chunked"; do
      local text=${direction/up length/up (Content-Length)}
      text=${text/up chunked/up (chunked)}
      echo "| ${NAME[$key]} | $text | ${STREAM_RATE[$key $direction]} |" \
        "$(ratio "${STREAM_RATE[$key $direction]}" "$STREAM_CEILING") | $(mib "${STREAM_PEAK[$key $direction]}") |" \
        "${STREAM_NOTE[$key $direction]} |"
    done
  done
}

wide_table() {
  echo "| Server | req/s | : Rust (best) | p99 ms | peak threads | peak RSS MiB | Errors |"
  echo "|---|--:|--:|--:|--:|--:|---|"
  local server best
  best=$(max "${WIDE_RPS[rust]}" "${WIDE_RPS[rustaddr]}")
  for server in "${SERVERS[@]}"; do
    echo "| ${NAME[$server]} | ${WIDE_RPS[$server]} | $(ratio "${WIDE_RPS[$server]}" "$best") | ${WIDE_P99[$server]} |" \
      "${WIDE_THREADS[$server]} | $(mib "${WIDE_RSS[$server]}") | ${WIDE_ERRORS[$server]} |"
  done
}

h2_table() {
  echo "| Connections | Streams | ${NAME[ours]} req/s | ${NAME[rust]} req/s | ours : Rust | ours p99 ms | Rust p99 ms | failed (ours / Rust) |"
  echo "|--:|--:|--:|--:|--:|--:|--:|---|"
  local point conns streams
  for point in "${H2_POINTS[@]}"; do
    read -r conns streams <<<"$point"
    echo "| $conns | $streams | ${H2_RPS[ours $conns $streams]} | ${H2_RPS[rust $conns $streams]} |" \
      "$(ratio "${H2_RPS[ours $conns $streams]}" "${H2_RPS[rust $conns $streams]}") |" \
      "${H2_P99[ours $conns $streams]} | ${H2_P99[rust $conns $streams]} |" \
      "${H2_ERRORS[ours $conns $streams]} / ${H2_ERRORS[rust $conns $streams]} |"
  done
  echo
  echo "Peak RSS over these runs: ${NAME[ours]} $(mib "${H2_RSS[ours]}") MiB, ${NAME[rust]} $(mib "${H2_RSS[rust]}") MiB."
}

calls_table() {
  echo "| Through | GET: forwarder msgs | component msgs | round trips | POST 1 KiB: forwarder msgs | component msgs | round trips |"
  echo "|---|--:|--:|--:|--:|--:|--:|"
  local key get post
  for key in "${FORWARDERS[@]}"; do
    read -r -a get <<<"${TAP[$key GET]}"
    read -r -a post <<<"${TAP[$key POST]}"
    echo "| ${NAME[$key]} | ${get[0]} | ${get[1]} | ${get[2]} | ${post[0]} | ${post[1]} | ${post[2]} |"
  done
}

# What "2x the Rust provider" asks of the machine, point by point, from this run's own numbers:
# the CPU nats-server and the component spent per /proxy call through the provider (wrk's own CPU
# left out, so the bound is generous) caps req/s at cores / that CPU even with a forwarder that
# cost nothing; and a call needs its round trips to the response head, each at least NATS's own
# request/reply time (p50 at 1 requester), so one connection cannot go faster than that.
# Sets HEADROOM_BEYOND to the number of points where 2x the Rust provider lies above a bound.
HEADROOM_BEYOND=0
headroom_table() {
  echo "| Request | Conns | provider req/s | 2x Rust (best) | nats-server + component CPU ms / req | CPU bound req/s | round-trip bound req/s | 2x Rust within both? | CPU ms / req left at 2x Rust for forwarder + wrk | provider CPU ms / req now |"
  echo "|---|--:|--:|--:|--:|--:|--:|---|--:|--:|"
  local body conns k twice cpu cpu_bound trips rt_bound within left
  HEADROOM_BEYOND=0
  for body in "${BODY_SIZES[@]}"; do
    trips=${TAP[ours GET]##* }
    ((body > 0)) && trips=${TAP[ours POST]##* }
    for conns in "${CONNECTIONS[@]}"; do
      k="$body $conns"
      twice=$(awk -v a="$(max "${RPS[rust $k]}" "${RPS[rustaddr $k]}")" 'BEGIN { printf "%.0f", 2 * a }')
      cpu=$(awk -v n="${NATS_CPU_PER_1K[ours $k]}" -v c="${COMPONENT_CPU_PER_1K[ours $k]}" 'BEGIN { printf "%.3f", n + c }')
      cpu_bound=$(awk -v c="$cpu" -v p="$(nproc)" 'BEGIN { printf "%.0f", (c > 0) ? p * 1000 / c : 0 }')
      rt_bound=$(awk -v n="$conns" -v t="$trips" -v us="${CEILING_P50[1]}" 'BEGIN { printf "%.0f", n * 1e6 / (t * us) }')
      within=$(awk -v w="$twice" -v a="$cpu_bound" -v b="$rt_bound" 'BEGIN {
        if (w > a) print "no: above the CPU bound"; else if (w > b) print "no: above the round-trip bound"; else print "yes" }')
      [[ "$within" == yes ]] || HEADROOM_BEYOND=$((HEADROOM_BEYOND + 1))
      left=$(awk -v p="$(nproc)" -v w="$twice" -v c="$cpu" 'BEGIN { printf "%.3f", p * 1000 / w - c }')
      echo "| $(request_name "$body") | $conns | ${RPS[ours $k]} | $twice | $cpu | $cpu_bound | $rt_bound | $within |" \
        "$left | ${CPU_PER_1K[ours $k]} |"
    done
  done
}

# The lowest of "$2 / $3-value" over every point, where $1 is "rps" (ours / best anchor,
# higher is better) or "p99" (best anchor / ours): prints "ratio where (met/total)".
lowest_over_points() {
  local what=$1 threshold=$2 anchors=$3 body conns k ours anchor r
  for body in "${BODY_SIZES[@]}"; do
    for conns in "${CONNECTIONS[@]}"; do
      k="$body $conns"
      case "$what" in
      rps) anchor=0; for a in $anchors; do anchor=$(max "$anchor" "${RPS[$a $k]}"); done
           r=$(ratio "${RPS[ours $k]}" "$anchor") ;;
      p99) anchor=1e9; for a in $anchors; do anchor=$(min "$anchor" "${P99[$a $k]}"); done
           r=$(ratio "$anchor" "${P99[ours $k]}") ;;
      esac
      echo "$r $(request_name "$body" | tr ' ' _)_at_$conns"
    done
  done | sort -g | awk -v t="$threshold" '
    NR == 1 { lowest = $1; where = $2 } { total++; if ($1 >= t) met++ }
    END { gsub(/_/, " ", where); printf "%sx (%s); %d of %d points\n", lowest, where, met, total }'
}

stream_target() {  # $1 direction key: "down", "up length", "up chunked"
  local d=$1 best=0 a
  for a in rust go; do best=$(max "$best" "${STREAM_RATE[$a $d]}"); done
  local r
  r=$(ratio "${STREAM_RATE[ours $d]}" "$best")
  local rss
  rss=$(mib "${STREAM_PEAK[ours $d]}")
  local verdict rss_verdict
  verdict=$(at_least "$r" 1.5)
  [[ "$best" == 0 ]] && verdict="no anchor finished the transfer"
  [[ "${STREAM_NOTE[ours $d]}" == ok ]] || verdict="NOT met (the provider's transfer failed)"
  rss_verdict=$(awk -v m="$rss" 'BEGIN { print (m <= 32) ? "met" : "NOT met" }')
  local text=${d/up length/up (Content-Length)}
  text=${text/up chunked/up (chunked)}
  echo "| 1 GiB $text: >= 1.5x the faster anchor | ${STREAM_RATE[ours $d]} vs $best MiB/s = ${r}x; 1.5x would be" \
    "$(awk -v b="$best" 'BEGIN { printf "%.0f", b * 1.5 }') MiB/s, NATS alone moves $STREAM_CEILING | $verdict |"
  echo "| 1 GiB $text: peak RSS <= 32 MiB | $rss MiB | $rss_verdict |"
}

targets_table() {
  local r
  echo "| Target (every point, same run) | Measured: lowest ratio (where); points met | |"
  echo "|---|---|---|"
  echo "| \`/proxy\` >= 5x the seed | the seed's Go code could not be built here (see above) | not measured |"
  r=$(lowest_over_points rps 2 "rust rustaddr")
  echo "| \`/proxy\` >= 2x the Rust provider (its better mode at each point) | $r; 2x lies beyond what this" \
    "machine allows any forwarder at $HEADROOM_BEYOND of 12 points (see below) | $(at_least "${r%%x*}" 2) |"
  r=$(lowest_over_points p99 2 "rust rustaddr")
  echo "| p99 <= half the Rust provider's (better mode) | $r | $(at_least "${r%%x*}" 2) |"
  r=$(lowest_over_points rps 1.5 "go")
  echo "| \`/proxy\` >= 1.5x the Go gateway | $r | $(at_least "${r%%x*}" 1.5) |"
  stream_target down
  stream_target "up length"
  stream_target "up chunked"
}

if [[ -n "$HOST_BIN" ]]; then
{
  echo "# Benchmark results in front of a wasmCloud host"
  echo
  echo "Written by \`make bench-host\` (bench/run.sh with BENCH_HOST); everything on one machine over loopback, in" \
    "one run, on one nats-server (with JetStream, as the host needs) and one component: the interop's Wasm" \
    "component (interop/component, componentize-js) served by wasmCloud's host (interop-host, wasmcloud-host 0.27.1)."
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Machine: $(nproc) cores ($cpu_model), $(uname -sr), shared with other work; load average before the runs:" \
    "$LOAD_BEFORE, after: $LOAD_AFTER"
  echo "- Versions: $VERSIONS; nats-server $("$NATS_SERVER_BIN" --version | awk '{ print $2 }') for this run"
  echo "- wrk and the forwarders as in bench/results.md; CPU is per 1,000 requests, of the forwarding process," \
    "nats-server and the host (all threads, /proc/PID/stat)."
  echo "- The host stops answering within a minute of 128 connections (README, make bench-host), so each run" \
    "at 128 connections, and the first run after one, meets a freshly started host, warmed up with 2 s per" \
    "forwarder at 1 connection (started $HOST_STARTS times in all; $HOST_KILLS of the stopped ones hung on" \
    "SIGTERM and were killed after 10 s)."
  echo
  echo "## The provider against its anchors"
  echo
  ratios_table
  echo
  echo "## One call, tapped"
  echo
  calls_table
  echo
  echo "## Every run"
  echo
  requests_table
  echo
  echo "![throughput vs connections](throughput-host.png)"
} >"$RESULTS.tmp"
else
{
  echo "# Benchmark results"
  echo
  echo "Written by \`make bench\` (bench/run.sh); everything on one machine over loopback, in one run, on one"
  echo "nats-server and one component (\`build/demo-component\`)."
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Machine: $(nproc) cores ($cpu_model), $(uname -sr), shared with other work; load average before the runs:" \
    "$LOAD_BEFORE, after: $LOAD_AFTER"
  echo "- Versions: $VERSIONS"
  echo "- wrk: ${RUN_SECONDS} s per run, 1 thread at 1 connection and 2 threads otherwise, request timeout 10 s;" \
    "POST bodies via bench/wrk_post.lua (the component echoes them, so the response is as large)."
  echo "- Forwarders: the provider (host data on stdin; max_content_len 2G, timeout_ms 60000); wasmCloud's Rust" \
    "provider (bench/rust-provider: the crate's \`run()\` behind a minimal main, host data on stdin with the link" \
    "in \`link_definitions\`; timeout_ms 60000) in path mode (keep-alive) and in address mode (its default, which" \
    "closes each HTTP/1 connection after one response, so wrk reconnects per request); bench/go-gateway (Go" \
    "net/http + nats.go, fresh subscriptions per call like the seed's transport). CPU is per 1,000 requests, of the" \
    "forwarding process, nats-server and the component (all threads, /proc/PID/stat); wrk shares the same cores."
  echo "- The seed (wasmCloud/go \`examples/provider/http-server\` on \`go.wasmcloud.dev/provider/wrpchttp\` and" \
    "\`wrpc.io/go\`) is not in this run: the Go module proxy reachable here refuses both module hosts" \
    "(\`403 Forbidden: Go module host not permitted: Go module fetches are limited to the module-host allowlist\`)."
  echo
  echo "## NATS on this machine"
  echo
  echo "Request/reply ceiling (bench/nats-probe: nats.go, one connection each side, 64-byte payloads," \
    "${RUN_SECONDS} s): ${CEILING[1]} round trips/s at 1 requester (p50 ${CEILING_P50[1]} us)," \
    "${CEILING[32]}/s at 32 requesters (p50 ${CEILING_P50[32]} us). Streaming ceiling (bench/nats-probe" \
    "stream: one connection publishes 1 GiB in 1 MiB messages, another receives it): $STREAM_CEILING MiB/s;" \
    "a 1 GiB transfer through a forwarder crosses nats-server the same way once, and the forwarder, the component" \
    "and curl need the same 2 cores besides."
  echo
  echo "One call, tapped (a subscriber on \`>\`): messages the forwarder published, messages the component" \
    "published, and round trips before the response head (runs of forwarder messages before the first result" \
    "message; each run after the first waits for the component's handshake):"
  echo
  calls_table
  echo
  echo "The provider's \`/proxy\` GET at 32 connections uses $(ratio "${RPS[ours 0 32]}" "${CEILING[32]}") of the" \
    "ceiling's round trips per second (${RPS[ours 0 32]} req/s x ${TAP[ours GET]##* } round trip vs ${CEILING[32]}/s)."
  echo
  echo "## The provider against its anchors"
  echo
  ratios_table
  echo
  echo "## Targets"
  echo
  headroom_table >"$LOGS/headroom.md"  # before the targets: it counts the points beyond the bounds
  targets_table
  echo
  echo "### What 2x the Rust provider asks of this machine"
  echo
  echo "CPU bound: $(nproc) cores / the CPU nats-server and the component spent per call through the provider" \
    "in this run (wrk's CPU left out, so the bound is generous): the most req/s even a forwarder that cost" \
    "nothing could reach. Round-trip bound: connections / (round trips to the response head x NATS's" \
    "request/reply p50 at 1 requester, ${CEILING_P50[1]} us): one connection cannot go faster. At 2x the" \
    "Rust provider's rate the cores leave the CPU per call in the second to last column for the forwarder and" \
    "wrk together; the last column is what the provider spends now."
  echo
  cat "$LOGS/headroom.md"
  echo
  echo "## Streaming 1 GiB through \`/proxy\`"
  echo
  echo "Down: \`GET /proxy/bytes/$STREAM_BYTES\`. Up: \`POST /proxy/count\` (the component answers \"N bytes\"), with" \
    "Content-Length and chunked. Peak RSS is VmHWM of the forwarding process, reset before each transfer."
  echo
  stream_table
  echo
  echo "Provider peak RSS over the whole run: $(mib "$PROVIDER_PEAK_AFTER_WRK") MiB."
  echo
  echo "## $WIDE_CONNS connections"
  echo
  echo "GET at $WIDE_CONNS connections (wrk, 2 threads, ${RUN_SECONDS} s) through each server: its threads, sampled" \
    "every 100 ms, and its peak RSS (VmHWM, reset before)."
  echo
  wide_table
  echo
  echo "## HTTP/2 (h2c)"
  echo
  echo "GET \`/proxy\` over h2c with h2load ($(h2load --version 2>&1 | awk 'NR == 1 { print $2 }'), ${RUN_SECONDS} s per" \
    "run, 1 thread): the given streams in all, spread over the connections. p99 from h2load's per-request log."
  echo
  h2_table
  echo
  echo "## Every run"
  echo
  requests_table
  echo
  echo "Errors are wrk's \"Non-2xx or 3xx responses\" and socket errors (connect, read, write, timeout)." \
    "NATS messages per request are the server's in_msgs (/connz) over the run divided by wrk's requests:" \
    "all connections, then the forwarder's own."
  echo
  echo "![throughput vs connections](throughput.png)"
  # The tuning history is written by hand; each run keeps it under the fresh numbers.
  if [[ -f "$BENCH_DIR/tuning.md" ]]; then
    echo
    cat "$BENCH_DIR/tuning.md"
  fi
} >"$RESULTS.tmp"
fi
mv "$RESULTS.tmp" "$RESULTS"

for body in 0 1024; do
  for conns in "${CONNECTIONS[@]}"; do
    echo "$conns ${RPS[ours $body $conns]} ${RPS[rust $body $conns]} ${RPS[rustaddr $body $conns]} ${RPS[go $body $conns]}"
  done
  printf '\n\n'
done >"$LOGS/throughput.dat"
gnuplot -e "datafile='$LOGS/throughput.dat'; outfile='$PLOT'; subtitle='$(nproc) cores, $cpu_model, $RUN_SECONDS s per point, $(date -u +%Y-%m-%d)'" \
  "$BENCH_DIR/plot.gp" || fail "gnuplot could not draw $PLOT"

cat "$RESULTS"
echo
echo "bench: wrote $RESULTS and $PLOT" >&2
