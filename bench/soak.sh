#!/usr/bin/env bash
# The soak of `make soak` (not part of `make test`): the provider under steady load while the
# lattice around it changes, all on loopback:
#
#   nats-server A <-> B <-> C (a 3-node cluster, full mesh of routes)
#     ^             ^
#     |             +-- demo-component (http-http_component, given B's URL)
#     +-- http-server: the provider, host data on stdin as a host writes it (given A's URL),
#         one source link to the component whose source_config keeps the listener where the
#         provider config puts it, otel_config exporting everything to the OpenTelemetry
#         collector (tests/otel)            <- wrk on /proxy and wrk on / (1 thread each)
#
# The run is cut into phases, each with its own wrk runs (so each phase has its own p99 and
# failure counts): the warm-up, then a cycle of events run SOAK_CYCLES times, then a steady
# phase. The cycle:
#
#   steady; link deleted (linkdefs.del); link put back (linkdefs.put); CORS-only config updates
#   (config.update, three of them); collector stopped; collector started again; restart of a
#   node that neither the provider nor the component is on; restart of the provider's node (it
#   has to fail over); lame duck mode on the provider's node (nats-server --signal ldm=PID; the
#   node is started again once it has exited).
#
# A phase lasts SOAK_SECONDS / (number of phases: 2 + 9 x SOAK_CYCLES) seconds (at least 5).
# An event happens 1 s into its phase; a phase lasts longer when its event takes longer. Each
# phase ends with one curl per path under the load (wrk never counts a request that gets no
# answer at all, so a provider that hangs shows there, and as a stall: soak.lua reports when the
# last response came). At the end it prints, per phase ("2: link deleted": the phase of cycle 2)
# and path: requests, p50/p99/max latency, the provider's RSS/threads/fds at the phase's end,
# and the failures by cause (non-2xx by status, connect/read/write errors, responses slower than
# WRK_TIMEOUT_SECONDS, stalls, failed probes), each failure either named by a by-design rule
# (RULES below) or counted as unexplained; then the events (how long each took), and the
# provider's RSS, threads and open fds read from /proc with no load (SOAK_IDLE_SECONDS after
# the warm-up, after the first cycle and after the last phase, so idle HTTP and wRPC workers
# have exited).
# The first pass through the events grows the provider once (buffers reaching their working
# size: the NATS write buffer after reconnects, telemetry batches, allocator arenas), so the
# first cycle is the warm-up of every path: the leak check compares the reading after the
# first cycle ("start") with the one after the last phase ("end"); the one after the warm-up
# is printed for information only.
# Exits 1 when a failure is unexplained, when one of RSS, threads or fds grew from start to end
# by 10% or more, when telemetry did not resume after the collector came back (in any cycle),
# or when the provider is no longer alive and healthy (NATS health request) at the end.
#
# Usage: bench/soak.sh [BUILD_DIR] [OTEL_COLLECTOR]   (`make soak` passes both)
#   SOAK_SECONDS=300      the whole run (without the three idle waits and slow events); 60 to try it
#                         (phases of 5 s)
#   SOAK_CYCLES=3         how many times the cycle of events runs (at least 2)
#   SOAK_CONNECTIONS=8    wrk connections on each of / and /proxy
#   SOAK_DELAY_MS=5       pause before each request on a connection (0: as fast as answered;
#                         5 keeps 2 cores from saturating, so the timing of events is not the
#                         scheduler's)
#   SOAK_FAILOVER_MS=1000 how long after the provider's node stops 503s on /proxy are by design
#   SOAK_IDLE_SECONDS=7   wait without load before reading the provider's resources
#   SOAK_KEEP_LOGS=1      keep the process logs and wrk outputs (kept anyway when the soak fails)
set -euo pipefail

BUILD=${1:-build}
COLLECTOR_BIN=${2:-build/otel/otel-file-collector}
SOAK_SECONDS=${SOAK_SECONDS:-300}
CYCLES=${SOAK_CYCLES:-3}
CONNECTIONS=${SOAK_CONNECTIONS:-8}
DELAY_MS=${SOAK_DELAY_MS:-5}
FAILOVER_MS=${SOAK_FAILOVER_MS:-1000}
IDLE_SECONDS=${SOAK_IDLE_SECONDS:-7}
GROWTH_LIMIT_PERCENT=10
# wrk counts a response that took longer than this as a timeout (when it comes). Above the
# provider's timeout_ms (2 s): a component that does not answer shows as the provider's 504, a
# provider that does not answer as a stall and a failed probe.
WRK_TIMEOUT_SECONDS=3
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LUA="$BENCH_DIR/soak.lua"

PROVIDER_BIN="$BUILD/http-server"
COMPONENT_BIN="$BUILD/demo-component"
NATS_LITE="$BUILD/nats_lite"

for bin in "$PROVIDER_BIN" "$COMPONENT_BIN" "$NATS_LITE" "$COLLECTOR_BIN"; do
  [[ -x "$bin" ]] || { echo "soak: $bin is missing; run 'make soak'" >&2; exit 1; }
done
for tool in nats-server wrk curl; do
  command -v "$tool" >/dev/null || { echo "soak: $tool is missing; run 'make soak'" >&2; exit 1; }
done
for value in "$SOAK_SECONDS" "$CYCLES" "$CONNECTIONS" "$DELAY_MS" "$FAILOVER_MS" "$IDLE_SECONDS"; do
  [[ "$value" =~ ^[0-9]+$ ]] || { echo "soak: SOAK_* settings are whole numbers, got '$value'" >&2; exit 1; }
done
((SOAK_SECONDS > 0 && CONNECTIONS > 0)) || { echo "soak: SOAK_SECONDS and SOAK_CONNECTIONS must be > 0" >&2; exit 1; }
((CYCLES >= 2)) || { echo "soak: SOAK_CYCLES must be at least 2 (the first cycle is the warm-up of every path)" >&2; exit 1; }

SCRIPT_NAME=soak
KEEP_LOGS=${SOAK_KEEP_LOGS:-0}
source "$BENCH_DIR/../demo/lib.sh"

trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT

# ---- phases and the failures they may have by design ----

# The kinds of phase; those of a cycle, and the event each runs.
CYCLE_KINDS=(steady link-del link-put config collector-down collector-up restart-other restart-provider lame-duck)
declare -A KIND_LABEL=(
  [warmup]="warm-up" [steady]="steady" [link-del]="link deleted" [link-put]="link put back"
  [config]="CORS config updates" [collector-down]="collector down" [collector-up]="collector back up"
  [restart-other]="restart of another node" [restart-provider]="restart of provider's node"
  [lame-duck]="lame duck on provider's node" [final]="steady (end)"
)
declare -A KIND_EVENT=(
  [link-del]=ev_link_del [link-put]=ev_link_put [config]=ev_config [collector-down]=ev_collector_down
  [collector-up]=ev_collector_up [restart-other]=ev_restart_other [restart-provider]=ev_restart_provider
  [lame-duck]=ev_lame_duck
)
# The phases in run order, by key: warmup, 1.steady ... 1.lame-duck, 2.steady ..., final. KIND
# and CYCLE (empty outside the cycles) of each; LABEL: its label in the report ("2: link
# deleted"; an event may make it more precise, keeping PREFIX, "2: ").
PHASES=(warmup)
declare -A KIND=([warmup]=warmup [final]=final) CYCLE=([warmup]="" [final]="") PREFIX=([warmup]="" [final]="")
for ((c = 1; c <= CYCLES; c++)); do
  for kind in "${CYCLE_KINDS[@]}"; do
    PHASES+=("$c.$kind")
    KIND[$c.$kind]=$kind CYCLE[$c.$kind]=$c PREFIX[$c.$kind]="$c: "
  done
done
PHASES+=(final)
declare -A LABEL
for key in "${PHASES[@]}"; do LABEL[$key]="${PREFIX[$key]}${KIND_LABEL[${KIND[$key]}]}"; done
PHASE_SECONDS=$((SOAK_SECONDS / ${#PHASES[@]}))
((PHASE_SECONDS >= 5)) || PHASE_SECONDS=5
ROUTES=(/proxy /)

# A failure is allowed only when a rule names it: "name|kind|path|status|window|why" (kind: of
# the phase, in every cycle), where window is how many ms after the phase's event (EVENT_MS) the failure may come. Nothing else
# may fail: in the default routing mode /proxy forwards to its single target with or without a
# link (main.cpp: single_target), so deleting the link changes nothing; the CORS updates apply
# to preflights and Origin requests only (wrk sends neither); telemetry is best effort (a
# collector that is down costs dropped telemetry, never a request); a node the provider is not
# on, and lame duck mode on the one it is on, must cost no request (tests/test_cluster.cpp);
# `/` is answered by the provider itself whatever NATS does; and no event may cost a
# socket error or a timeout.
RULES=(
  "node-loss|restart-provider|/proxy|503|$FAILOVER_MS|calls in flight on the lost NATS connection end with 503 at once, and calls made before the provider has reconnected to another node get 503 (not connected to NATS); it fails over within ${FAILOVER_MS} ms"
)

declare -A EVENT_MS NOTE PROBE USAGE_AT COLLECTOR_RUN_AT
now_ms() { date +%s%3N; }

# ---- processes ----

# True while process $1 runs (a child that exited but is not reaped yet is a zombie: not running).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ "${stat:0:1}" != Z ]]
}
forget_pid() {  # removes $1 from PIDS (once it is reaped its number may be reused)
  local kept=() pid
  for pid in "${PIDS[@]}"; do [[ "$pid" == "$1" ]] || kept+=("$pid"); done
  PIDS=("${kept[@]}")
}
# SIGTERM (or signal $2), up to 10 s to exit, then SIGKILL; reaps it and forgets it.
stop_pid() {
  local pid=$1 i
  kill "-${2:-TERM}" "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}

# ---- the NATS cluster ----

NODE_NAMES=(A B C)
declare -a NATS_PORT MON_PORT ROUTE_PORT NODE_PID
ports=()
for i in 0 1 2; do
  NATS_PORT[i]=$(free_port "${ports[@]}") && ports+=("${NATS_PORT[i]}")
  MON_PORT[i]=$(free_port "${ports[@]}") && ports+=("${MON_PORT[i]}")
  ROUTE_PORT[i]=$(free_port "${ports[@]}") && ports+=("${ROUTE_PORT[i]}")
done
for i in 0 1 2; do
  routes=()
  for j in 0 1 2; do ((j == i)) || routes+=("nats-route://127.0.0.1:${ROUTE_PORT[j]}"); done
  # As tests/support.hpp's clusters: the shortest lame duck duration nats-server accepts, and
  # clients evicted after a 1 s grace period.
  cat >"$LOGS/nats-${NODE_NAMES[i]}.conf" <<EOF
server_name: ${NODE_NAMES[i]}
listen: 127.0.0.1:${NATS_PORT[i]}
http: 127.0.0.1:${MON_PORT[i]}
lame_duck_duration: "30s"
lame_duck_grace_period: "1s"
cluster {
  name: soak
  listen: 127.0.0.1:${ROUTE_PORT[i]}
  routes: [${routes[0]}, ${routes[1]}]
}
EOF
done

node_url() { echo "nats://127.0.0.1:${NATS_PORT[$1]}"; }
node_running() { [[ -n "${NODE_PID[$1]:-}" ]] && alive "${NODE_PID[$1]}"; }
start_node() {
  local name=${NODE_NAMES[$1]}
  nats-server -c "$LOGS/nats-$name.conf" >>"$LOGS/nats-$name.log" 2>&1 &
  NODE_PID[$1]=$!
  PIDS+=($!)
  wait_for "${NODE_PID[$1]}" 10 port_in_use "${NATS_PORT[$1]}" || fail "nats-server $name did not start"
}
stop_node() {
  stop_pid "${NODE_PID[$1]}"
  NODE_PID[$1]=""
}
node_routed() {  # node $1 has routes to both others
  [[ "$(curl -s --max-time 2 "http://127.0.0.1:${MON_PORT[$1]}/routez" 2>/dev/null)" == *'"num_routes": 2'* ]]
}
cluster_routed() {
  node_routed 0 && node_routed 1 && node_routed 2
}
wait_cluster() {
  local deadline=$((SECONDS + 20))
  until cluster_routed; do
    ((SECONDS < deadline)) || fail "the NATS cluster did not form (every node routed to both others)"
    sleep 0.1
  done
}
# The node (0-2) that has a client connection named $1, or nothing.
node_of() {
  local i out
  for i in 0 1 2; do
    node_running "$i" || continue
    out=$(curl -s --max-time 2 "http://127.0.0.1:${MON_PORT[i]}/connz?limit=1024" 2>/dev/null || true)
    if grep -Eq "\"name\": ?\"$1\"" <<<"$out"; then
      echo "$i"
      return 0
    fi
  done
  return 1
}
any_node_url() {
  local i
  for i in 0 1 2; do node_running "$i" && { node_url "$i"; return 0; }; done
  return 1
}

for i in 0 1 2; do start_node "$i"; done
wait_cluster
echo "nats-server cluster   A $(node_url 0), B $(node_url 1), C $(node_url 2)"

# ---- the OpenTelemetry collector ----

OTEL_PORT=$(free_port "${ports[@]}") && ports+=("$OTEL_PORT")
COLLECTOR_RUN=0 COLLECTOR_PID=""
# Each start writes to a folder of its own (otel-1, otel-2, ...), so what arrives after a
# restart can be told apart; rotation keeps a long run's files small.
start_collector() {
  COLLECTOR_RUN=$((COLLECTOR_RUN + 1))
  local dir="$LOGS/otel-$COLLECTOR_RUN"
  mkdir -p "$dir"
  cat >"$dir/config.yaml" <<EOF
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:$OTEL_PORT
exporters:
  file:
    path: $dir/received.jsonl
    flush_interval: 100ms
    rotation: {max_megabytes: 20, max_backups: 1}
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces: {receivers: [otlp], exporters: [file]}
    metrics: {receivers: [otlp], exporters: [file]}
    logs: {receivers: [otlp], exporters: [file]}
EOF
  "$COLLECTOR_BIN" --config "$dir/config.yaml" >"$dir/collector.log" 2>&1 &
  COLLECTOR_PID=$!
  PIDS+=($!)
  wait_for "$COLLECTOR_PID" 30 port_in_use "$OTEL_PORT" || fail "the collector did not start on port $OTEL_PORT"
}
stop_collector() {
  stop_pid "$COLLECTOR_PID"
  COLLECTOR_PID=""
}
# Batches of spans collector run $1 received.
span_batches() {
  cat "$LOGS/otel-$1"/received*.jsonl 2>/dev/null | grep -c '"resourceSpans"' || true
}

start_collector
echo "otel collector        http://127.0.0.1:$OTEL_PORT"

# ---- the component and the provider ----

start_demo_component "$COMPONENT_BIN" "$(node_url 1)"
echo "demo component        $COMPONENT_ID on node B"

HTTP_PORT=$(free_port "${ports[@]}")
ADDRESS="127.0.0.1:$HTTP_PORT"
NATS_URL=$(node_url 0)  # host_data's lattice_rpc_url
BASE_CONFIG="{\"address\":\"$ADDRESS\",\"timeout_ms\":\"2000\"}"
# The link's source_config names the same address as the provider config, so putting and
# deleting it never moves the listener.
LINK=$(link "$PROVIDER_ID" default "{\"address\":\"$ADDRESS\"}")
OTEL_CONFIG="{\"enable_observability\":true,\"observability_endpoint\":\"http://127.0.0.1:$OTEL_PORT\",\"protocol\":\"Http\"}"
HOST_DATA=$(host_data "$PROVIDER_ID" "$BASE_CONFIG" "$LINK" info)
HOST_DATA="${HOST_DATA%\}},\"otel_config\":$OTEL_CONFIG}"  # lib.sh's host data has no otel_config
# A host starts the provider with an empty environment.
host_data_line "$HOST_DATA" | env -i "$PROVIDER_BIN" >"$LOGS/http-server.log" 2>&1 &
PROVIDER_PID=$!
PIDS+=($!)

answers() {  # $1 path, $2 expected body
  [[ "$(curl -s --max-time 2 "http://$ADDRESS$1" 2>/dev/null)" == "$2" ]]
}
wait_for "$PROVIDER_PID" 20 answers /proxy "Hello from the component!" || fail "the provider did not answer /proxy"
answers / "Hello from the provider!" || fail "the provider's / gives a wrong answer"
echo "provider              $PROVIDER_ID (pid $PROVIDER_PID) on $ADDRESS, on node A (logs: $LOGS)"

# ---- lattice requests ----

# Sends $2 to the provider's subject wasmbus.rpc.<lattice>.<provider>.$1, as a request when $3
# is "req" (REPLY gets the answer), else published; REPLY_MS: how long it took.
REPLY="" REPLY_MS=0
lattice_send() {
  local start url
  start=$(now_ms)
  url=$(any_node_url) || { REPLY="no NATS node running"; return 1; }
  if [[ "${3:-pub}" == req ]]; then
    REPLY=$("$NATS_LITE" --server "$url" req "wasmbus.rpc.$LATTICE.$PROVIDER_ID.$1" "$2" --timeout-ms 5000 2>&1) ||
      { REPLY_MS=$(($(now_ms) - start)); return 1; }
  else
    REPLY=$("$NATS_LITE" --server "$url" pub "wasmbus.rpc.$LATTICE.$PROVIDER_ID.$1" "$2" 2>&1) ||
      { REPLY_MS=$(($(now_ms) - start)); return 1; }
  fi
  REPLY_MS=$(($(now_ms) - start))
}

# ---- the events ----

ev_link_del() {
  if lattice_send linkdefs.del "$LINK" req; then
    NOTE[$1]="linkdefs.del answered in $REPLY_MS ms: $REPLY"
  else
    NOTE[$1]="linkdefs.del FAILED after $REPLY_MS ms: $REPLY"
  fi
}
ev_link_put() {
  if lattice_send linkdefs.put "$LINK" req; then
    NOTE[$1]="linkdefs.put answered in $REPLY_MS ms: $REPLY"
  else
    NOTE[$1]="linkdefs.put FAILED after $REPLY_MS ms: $REPLY"
  fi
}

# The Access-Control-Allow-Origin the provider gives a GET / from origin $1 is $2.
cors_answer() {
  local head
  head=$(curl -s -D - -o /dev/null --max-time 2 -H "Origin: $1" "http://$ADDRESS/" 2>/dev/null || true)
  grep -qiF "access-control-allow-origin: $2"$'\r' <<<"$head"
}
ev_config() {
  local key=$1 update start origin expected extra text=""
  # Each update replaces the whole config: the same address and timeout, other CORS settings.
  for update in "http://soak-1.example|http://soak-1.example|,\"cors_allowed_origins\":\"[\\\"http://soak-1.example\\\"]\"" \
                "http://soak-2.example|http://soak-2.example|,\"cors_allowed_origins\":\"[\\\"http://soak-2.example\\\"]\",\"cors_max_age_secs\":\"600\"" \
                "http://soak-3.example|*|"; do
    IFS='|' read -r origin expected extra <<<"$update"
    start=$(now_ms)
    if lattice_send config.update "${BASE_CONFIG%\}}$extra}" pub &&
       wait_for "$PROVIDER_PID" 10 cors_answer "$origin" "$expected"; then
      text+="; origin $origin gets '$expected' after $(($(now_ms) - start)) ms"
    else
      text+="; update for $origin NOT applied within 10 s ($REPLY)"
    fi
    sleep 0.5
  done
  NOTE[$key]="3 CORS-only updates${text}"
}
# COLLECTOR_RUN_AT: the collector run each of these phases stopped or started.
ev_collector_down() {
  COLLECTOR_RUN_AT[$1]=$COLLECTOR_RUN
  stop_collector
  NOTE[$1]="collector stopped (run ${COLLECTOR_RUN_AT[$1]}); it had received $(span_batches "${COLLECTOR_RUN_AT[$1]}") batches of spans"
}
ev_collector_up() {
  start_collector
  COLLECTOR_RUN_AT[$1]=$COLLECTOR_RUN
  NOTE[$1]="collector started again (run $COLLECTOR_RUN)"
}
# Stops node $1 (EVENT_MS[$2] = when), keeps it down 1 s, starts it, waits for the routes;
# RESTARTED says how long it took.
RESTARTED=""
restart_node() {
  local i=$1 key=$2
  EVENT_MS[$key]=$(now_ms)
  stop_node "$i"
  sleep 1
  start_node "$i"
  wait_cluster
  RESTARTED="node ${NODE_NAMES[i]} stopped (SIGTERM), back and routed after $(($(now_ms) - EVENT_MS[$key])) ms"
}
name_of_node() {  # $1: a node index or nothing
  if [[ -n "$1" ]]; then echo "${NODE_NAMES[$1]}"; else echo "no node"; fi
}
# Waits up to 10 s until the provider is connected to a node other than $1; echoes how long.
wait_moved_from() {
  local from=$1 start now_node
  start=$(now_ms)
  while (($(now_ms) - start < 10000)); do
    now_node=$(node_of "$PROVIDER_ID" || true)
    if [[ -n "$now_node" && "$now_node" != "$from" ]]; then
      echo "on node ${NODE_NAMES[now_node]} after $(($(now_ms) - start)) ms"
      return 0
    fi
    sleep 0.05
  done
  echo "NOT on another node within 10 s"
}
ev_restart_other() {
  local key=$1 p c i pick=""
  p=$(node_of "$PROVIDER_ID" || true)
  c=$(node_of "$COMPONENT_ID" || true)
  for i in 0 1 2; do [[ "$i" != "$p" && "$i" != "$c" ]] && { pick=$i; break; }; done
  LABEL[$key]="${PREFIX[$key]}restart of node ${NODE_NAMES[pick]} (nobody's)"
  restart_node "$pick" "$key"
  NOTE[$key]="provider on $(name_of_node "$p"), component on $(name_of_node "$c"); $RESTARTED"
}
ev_restart_provider() {
  local key=$1 p moved
  p=$(node_of "$PROVIDER_ID" || true)
  [[ -n "$p" ]] || { NOTE[$key]="the provider is on no node: nothing restarted"; return 0; }
  LABEL[$key]="${PREFIX[$key]}restart of provider's node ${NODE_NAMES[p]}"
  EVENT_MS[$key]=$(now_ms)
  stop_node "$p"
  moved=$(wait_moved_from "$p")
  sleep 0.5
  start_node "$p"
  wait_cluster
  NOTE[$key]="node ${NODE_NAMES[p]} stopped (SIGTERM); provider $moved; node ${NODE_NAMES[p]} back and routed"
  NOTE[$key]+=" $(($(now_ms) - EVENT_MS[$key])) ms after the stop; component on $(name_of_node "$(node_of "$COMPONENT_ID" || true)")"
}
ev_lame_duck() {
  local key=$1 p moved pid start exited="did NOT exit within 45 s"
  p=$(node_of "$PROVIDER_ID" || true)
  [[ -n "$p" ]] || { NOTE[$key]="the provider is on no node: no lame duck"; return 0; }
  LABEL[$key]="${PREFIX[$key]}lame duck on provider's node ${NODE_NAMES[p]}"
  pid=${NODE_PID[p]}
  EVENT_MS[$key]=$(now_ms)
  start=${EVENT_MS[$key]}
  nats-server --signal "ldm=$pid" >>"$LOGS/nats-signal.log" 2>&1 || true
  moved=$(wait_moved_from "$p")
  while (($(now_ms) - start < 45000)); do
    alive "$pid" || { exited="exited after $(($(now_ms) - start)) ms"; break; }
    sleep 0.1
  done
  stop_node "$p"  # reaps it (SIGKILL only if it is still there)
  start_node "$p"
  wait_cluster
  NOTE[$key]="ldm sent to node ${NODE_NAMES[p]}; provider $moved; the node $exited; started again;"
  NOTE[$key]+=" component on $(name_of_node "$(node_of "$COMPONENT_ID" || true)")"
}

# ---- load ----

route_file() {  # $1 phase, $2 path
  local tag=proxy
  [[ "$2" == / ]] && tag=root
  echo "$LOGS/wrk-$1-$tag.out"
}
WRK_PIDS=()
start_load() {
  local path
  WRK_PIDS=()
  for path in "${ROUTES[@]}"; do
    SOAK_DELAY_MS=$DELAY_MS wrk -t1 -c"$CONNECTIONS" -d3600s --timeout "${WRK_TIMEOUT_SECONDS}s" -s "$LUA" \
      "http://$ADDRESS$path" >"$(route_file "$1" "$path")" 2>&1 &
    WRK_PIDS+=($!)
    PIDS+=($!)
  done
}
stop_load() {  # SIGINT: wrk stops and prints what it counted (done() of soak.lua)
  local pid
  for pid in "${WRK_PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${WRK_PIDS[@]}"; do stop_pid "$pid" INT; done
  WRK_PIDS=()
}

# Runs phase $1: load on every path for PHASE_SECONDS (or as long as the event $2 needs + 1 s).
run_phase() {
  local key=$1 event=${2:-} start
  start=$(now_ms)
  start_load "$key"
  sleep 1
  [[ -z "$event" ]] || "$event" "$key"
  local left=$((PHASE_SECONDS * 1000 - ($(now_ms) - start))) path code probes=() pid
  ((left < 1000)) && left=1000
  sleep "$(awk -v ms="$left" 'BEGIN { printf "%.3f", ms / 1000 }')"
  # One request of our own on each path, under the load: a provider that stopped answering
  # shows here however the phase went.
  for path in "${ROUTES[@]}"; do
    curl -s -o /dev/null -w '%{http_code}' --max-time "$WRK_TIMEOUT_SECONDS" "http://$ADDRESS$path" \
      >"$(route_file "$key" "$path").probe" 2>/dev/null &
    probes+=($!)
    PIDS+=($!)
  done
  for pid in "${probes[@]}"; do
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
  done
  for path in "${ROUTES[@]}"; do
    code=$(cat "$(route_file "$key" "$path").probe" 2>/dev/null || true)
    [[ "$code" == 200 ]] || PROBE[$key $path]="probe at the phase's end: $([[ "$code" == 000 || -z "$code" ]] &&
      echo "no answer within $WRK_TIMEOUT_SECONDS s" || echo "HTTP $code")"
  done
  USAGE_AT[$key]=$(usage_of "$PROVIDER_PID")
  stop_load
  echo "soak: phase ${LABEL[$key]}: $(( ($(now_ms) - start) / 1000 )) s${NOTE[$key]:+ - ${NOTE[$key]}}" >&2
  alive "$PROVIDER_PID" || NOTE[$key]+="${NOTE[$key]:+; }THE PROVIDER EXITED"
}

# ---- the provider's resources ----

# "RSS_KiB threads fds" of process $1.
usage_of() {
  local rss threads fds
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0)
  threads=$(awk '/^Threads:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0)
  fds=$(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  echo "${rss:-0} ${threads:-0} $fds"
}
idle_usage() {  # $1: after what
  echo "soak: ${IDLE_SECONDS} s without load ($1), then the provider's RSS, threads and fds" >&2
  sleep "$IDLE_SECONDS"
  usage_of "$PROVIDER_PID"
}

# ---- the run ----

echo
echo "soak: ${#PHASES[@]} phases of ${PHASE_SECONDS} s (warm-up, $CYCLES cycles of ${#CYCLE_KINDS[@]}, steady); wrk: 1 thread, $CONNECTIONS connections on each of" \
  "${ROUTES[*]}, timeout ${WRK_TIMEOUT_SECONDS} s$( ((DELAY_MS > 0)) && echo ", ${DELAY_MS} ms pause per request")"
run_phase warmup
read -r -a USAGE_BEFORE <<<"$(idle_usage "after the warm-up")"
for ((c = 1; c <= CYCLES; c++)); do
  for kind in "${CYCLE_KINDS[@]}"; do run_phase "$c.$kind" "${KIND_EVENT[$kind]:-}"; done
  if ((c == 1)); then
    read -r -a USAGE_START <<<"$(idle_usage "after cycle 1")"
  fi
done
run_phase final
read -r -a USAGE_END <<<"$(idle_usage "after the last phase")"

# ---- the report ----

PROBLEMS=()
declare -A REQS P50 P99 MAXLAT SOCKET FAILS
quiet=""

# Parses phase $1's wrk output for path $2 into the tables above. FAILS holds one line per
# status: "status total explained-by-rule... unexplained".
for key in "${PHASES[@]}"; do
  for path in "${ROUTES[@]}"; do
    k="$key $path"
    out=$(route_file "$key" "$path")
    if ! grep -q '^SOAK requests' "$out" 2>/dev/null; then
      REQS[$k]="-" P50[$k]="-" P99[$k]="-" MAXLAT[$k]="-" SOCKET[$k]="wrk printed no result"
      FAILS[$k]=""
      continue
    fi
    REQS[$k]=$(awk '$1 == "SOAK" && $2 == "requests" { print $3 }' "$out")
    read -r "P50[$k]" "P99[$k]" "MAXLAT[$k]" < <(awk '$1 == "SOAK" && $2 == "latency_us" { printf "%.2f %.2f %.2f\n", $4 / 1000, $6 / 1000, $8 / 1000 }' "$out")
    SOCKET[$k]=$(awk '$1 == "SOAK" && $2 == "errors" { s = ""
        if ($4) s = s sprintf("%s%d connect errors", s ? ", " : "", $4)
        if ($6) s = s sprintf("%s%d read errors", s ? ", " : "", $6)
        if ($8) s = s sprintf("%s%d write errors", s ? ", " : "", $8)
        if ($10) s = s sprintf("%s%d timeouts (> '"$WRK_TIMEOUT_SECONDS"' s)", s ? ", " : "", $10)
        print s }' "$out")
    [[ "${REQS[$k]}" != 0 ]] || P50[$k]="-" P99[$k]="-" MAXLAT[$k]="-"
    # The load stalled when its last response came long before the phase's end.
    quiet=$(awk '$1 == "SOAK" && $2 == "last_response_ms_before_end" { print $3 }' "$out")
    if [[ -n "$quiet" ]] && ((quiet > WRK_TIMEOUT_SECONDS * 1000)); then
      SOCKET[$k]+="${SOCKET[$k]:+, }stalled: no response in the last $(awk -v ms="$quiet" 'BEGIN { printf "%.1f", ms / 1000 }') s"
    fi
    # Each non-2xx slot against the rules: "status rule count" lines (rule "-" = unexplained).
    FAILS[$k]=$(
      awk '$1 == "SOAK" && $2 == "fail" { print $3, $4, $5 }' "$out" | while read -r status slot count; do
        rule="-"
        for r in "${RULES[@]}"; do
          IFS='|' read -r name phase rpath rstatus window why <<<"$r"
          [[ "$phase" == "${KIND[$key]}" && "$rpath" == "$path" && "$rstatus" == "$status" && -n "${EVENT_MS[$key]:-}" ]] || continue
          # The 100 ms slot overlaps [event, event + window].
          if ((slot * 100 + 100 > EVENT_MS[$key] && slot * 100 <= EVENT_MS[$key] + window)); then
            rule=$name
            break
          fi
        done
        echo "$status $rule $count $((slot * 100 - ${EVENT_MS[$key]:-0}))"
      done | awk '{ n[$1 " " $2] += $3
                    if (!(($1 " " $2) in lo) || $4 < lo[$1 " " $2]) lo[$1 " " $2] = $4
                    if (!(($1 " " $2) in hi) || $4 > hi[$1 " " $2]) hi[$1 " " $2] = $4 }
                  END { for (k in n) print k, n[k], lo[k], hi[k] }' | sort -n
    )
  done
done

rule_why() {
  local r name phase rpath rstatus window why
  for r in "${RULES[@]}"; do
    IFS='|' read -r name phase rpath rstatus window why <<<"$r"
    [[ "$name" == "$1" ]] && { echo "$why"; return; }
  done
}

echo
echo "==== soak: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "==== provider $PROVIDER_BIN, component $COMPONENT_BIN; ${#PHASES[@]} phases of >= ${PHASE_SECONDS} s" \
  "(warm-up, $CYCLES cycles of ${#CYCLE_KINDS[@]}, steady);" \
  "wrk 1 thread x $CONNECTIONS connections per path"
echo
echo "(RSS, threads and fds: the provider's, under the load, at the phase's end; \"2: ...\": a phase of cycle 2)"
printf '%-36s %-7s %9s %9s %9s %9s %8s %7s %4s  %s\n' "phase" "path" "requests" "p50 ms" "p99 ms" "max ms" \
  "RSS KiB" "threads" "fds" "failures"
unexplained_total=0
declare -a FAILURE_LINES
for key in "${PHASES[@]}"; do
  for path in "${ROUTES[@]}"; do
    k="$key $path"
    summary="none"
    parts=()
    while read -r status rule count first last; do
      [[ -n "$status" ]] || continue
      if [[ "$rule" == "-" ]]; then
        parts+=("HTTP $status x $count NOT EXPLAINED")
        unexplained_total=$((unexplained_total + count))
        at=""
        [[ -n "${EVENT_MS[$key]:-}" ]] && at=" (from ${first} to $((last + 100)) ms after the event)"
        FAILURE_LINES+=("$path during ${LABEL[$key]}: HTTP $status x $count: NOT explained by any rule$at")
      else
        parts+=("HTTP $status x $count by design ($rule)")
        FAILURE_LINES+=("$path during ${LABEL[$key]}: HTTP $status x $count by design: $rule: $(rule_why "$rule") (from ${first} to $((last + 100)) ms after the event)")
      fi
    done <<<"${FAILS[$k]}"
    if [[ "${REQS[$k]}" == 0 ]]; then
      parts+=("no request answered NOT EXPLAINED")
      FAILURE_LINES+=("$path during ${LABEL[$key]}: no request answered: NOT explained by any rule")
      unexplained_total=$((unexplained_total + 1))
    fi
    if [[ -n "${PROBE[$k]:-}" ]]; then
      parts+=("${PROBE[$k]} NOT EXPLAINED")
      FAILURE_LINES+=("$path during ${LABEL[$key]}: ${PROBE[$k]}: NOT explained by any rule")
      unexplained_total=$((unexplained_total + 1))
    fi
    if [[ -n "${SOCKET[$k]}" ]]; then
      parts+=("${SOCKET[$k]} NOT EXPLAINED")
      FAILURE_LINES+=("$path during ${LABEL[$key]}: ${SOCKET[$k]}: NOT explained by any rule")
      unexplained_total=$((unexplained_total + 1))
    fi
    ((${#parts[@]} == 0)) || summary=$(IFS=';'; echo "${parts[*]}" | sed 's/;/; /g')
    usage=("" "" "")
    [[ "$path" == "${ROUTES[0]}" ]] && read -r -a usage <<<"${USAGE_AT[$key]:-- - -}"
    printf '%-36s %-7s %9s %9s %9s %9s %8s %7s %4s  %s\n' "${LABEL[$key]}" "$path" "${REQS[$k]}" "${P50[$k]}" \
      "${P99[$k]}" "${MAXLAT[$k]}" "${usage[0]}" "${usage[1]}" "${usage[2]}" "$summary"
  done
done

echo
echo "Failures by cause:"
if ((${#FAILURE_LINES[@]} == 0)); then
  echo "  none"
else
  for line in "${FAILURE_LINES[@]}"; do echo "  $line"; done
fi
echo
echo "By-design rules (nothing else may fail):"
for r in "${RULES[@]}"; do
  IFS='|' read -r name phase rpath rstatus window why <<<"$r"
  echo "  $name: $rpath $rstatus during '${KIND_LABEL[$phase]}' (every cycle), up to $window ms after the event: $why"
done
echo "  (no rule for the link phases: in the default routing mode /proxy forwards to its single target" \
  "with or without a link; none for CORS updates, the collector, another node or lame duck mode; none for /)"

echo
echo "Events:"
for key in "${PHASES[@]}"; do
  [[ -n "${NOTE[$key]:-}" ]] && echo "  ${LABEL[$key]}: ${NOTE[$key]}"
done
# Each collector restart: the run stopped in the cycle and the one started after it, which has
# to receive spans.
for ((c = 1; c <= CYCLES; c++)); do
  down=${COLLECTOR_RUN_AT[$c.collector-down]:-} up=${COLLECTOR_RUN_AT[$c.collector-up]:-}
  if [[ -z "$down" || -z "$up" ]]; then
    PROBLEMS+=("cycle $c: the collector was not restarted")
    continue
  fi
  before=$(span_batches "$down")
  after=$(span_batches "$up")
  echo "  telemetry, cycle $c: collector run $down received $before batches of spans before it was stopped," \
    "run $up $after after it came back"
  ((after > 0)) || PROBLEMS+=("telemetry did not resume after the collector came back in cycle $c (run $up got no spans)")
done

echo
echo "Provider resources (no load, ${IDLE_SECONDS} s after the warm-up, after cycle 1 and after the last phase;"
echo "the first cycle is the warm-up of every path: growth is checked from its end, \"start\", to \"end\"):"
printf '  %-12s %22s %10s %10s %8s\n' "" "before the first cycle" "start" "end" "change"
resource_names=("RSS KiB" "threads" "open fds")
for i in 0 1 2; do
  a=${USAGE_START[i]} b=${USAGE_END[i]}
  change=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%+.1f%%", (b - a) * 100 / a; else print "-" }')
  printf '  %-12s %22s %10s %10s %8s\n' "${resource_names[i]}" "${USAGE_BEFORE[i]}" "$a" "$b" "$change"
  if awk -v a="$a" -v b="$b" -v limit="$GROWTH_LIMIT_PERCENT" 'BEGIN { exit !(a > 0 && (b - a) * 100 >= limit * a) }'; then
    PROBLEMS+=("${resource_names[i]} grew by $change from the end of cycle 1 to the end (limit: +$GROWTH_LIMIT_PERCENT%)")
  fi
done
line=""
for ((c = 1; c <= CYCLES; c++)); do line+="${line:+, }cycle $c: ${USAGE_AT[$c.lame-duck]%% *}"; done
echo "  (RSS KiB under load at the end of each cycle: $line; at the end: ${USAGE_AT[final]%% *})"

if ! alive "$PROVIDER_PID"; then
  PROBLEMS+=("the provider is no longer running")
elif ! lattice_send health "" req || [[ "$REPLY" != *'"healthy":true'* ]]; then
  PROBLEMS+=("the provider does not answer healthy on NATS: $REPLY")
fi
((unexplained_total == 0)) || PROBLEMS+=("failures no rule explains (see above)")

echo
if ((${#PROBLEMS[@]} == 0)); then
  echo "soak: PASSED"
  exit 0
fi
echo "soak: FAILED"
for p in "${PROBLEMS[@]}"; do echo "  - $p"; done
KEEP_LOGS=1
exit 1
