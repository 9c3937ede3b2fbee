#!/usr/bin/env bash
# The benchmark of `make bench`, all on loopback:
#
#   nats-server  <-  demo-component (http-http_component)
#        ^   ^
#        |   +----  http-server (the provider)   <- wrk / curl   `/` and `/proxy`
#        +--------  go-gateway (Go net/http + nats.go, same forwarding) <- wrk / curl `/proxy`
#
# wrk runs at 1, 8, 32 and 128 connections, GET and POST with 1 KiB, 64 KiB and 1 MiB
# bodies, against the provider's `/` (answered locally), its `/proxy` (forwarded to the
# component) and the Go gateway's `/proxy`. Then 1 GiB goes up and 1 GiB down through
# each `/proxy` with curl while the peak RSS of the forwarding process is taken from /proc.
# Writes bench/results.md and bench/throughput.png, and prints the results.
#
# Usage: bench/run.sh [BUILD_DIR]     (`make bench` runs `bench/run.sh build`)
#   BENCH_SECONDS=5     length of each wrk run (48 runs)
#   BENCH_KEEP_LOGS=1   keep the process logs and wrk outputs (kept anyway when a run fails)
set -euo pipefail

BUILD=${1:-build}
RUN_SECONDS=${BENCH_SECONDS:-5}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RESULTS="$BENCH_DIR/results.md"
PLOT="$BENCH_DIR/throughput.png"

PROVIDER_BIN="$BUILD/http-server"
COMPONENT_BIN="$BUILD/demo-component"
GATEWAY_BIN="$BUILD/go-gateway"
PROVIDER_ID="http-http_provider"
COMPONENT_ID="http-http_component"
LATTICE="default"

CONNECTIONS=(1 8 32 128)
BODY_SIZES=(0 1024 65536 1048576)  # request body bytes; 0 is a GET
STREAM_BYTES=$((1 << 30))

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
install_missing wrk gnuplot-nox curl nats-server

for bin in "$PROVIDER_BIN" "$COMPONENT_BIN" "$GATEWAY_BIN"; do
  [[ -x "$bin" ]] || { echo "bench: $bin is missing; run 'make all $BUILD/go-gateway' first" >&2; exit 1; }
done
if [[ ! "$RUN_SECONDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "bench: BENCH_SECONDS must be a whole number of seconds, got '$RUN_SECONDS'" >&2
  exit 1
fi

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/wrpc-http-bench.XXXXXX")
PIDS=()  # started processes, in start order
KEEP_LOGS=${BENCH_KEEP_LOGS:-0}  # also set when a run fails, so its logs can be read

# ---- processes ----

SCRIPT_NAME=bench
source "$BENCH_DIR/../demo/lib.sh"

trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT


# CPU time (user + system) of process $1 so far, in clock ticks.
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

# ---- start ----

PROVIDER_PORT=$(free_port)
GATEWAY_PORT=$(free_port "$PROVIDER_PORT")
NATS_PORT=$(free_port "$PROVIDER_PORT" "$GATEWAY_PORT")
NATS_URL="nats://127.0.0.1:$NATS_PORT"
PROVIDER_URL="http://127.0.0.1:$PROVIDER_PORT"
GATEWAY_URL="http://127.0.0.1:$GATEWAY_PORT"

nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$LOGS/nats-server.log" 2>&1 &
PIDS+=($!)
wait_for "${PIDS[-1]}" 10 port_in_use "$NATS_PORT" || fail "nats-server did not start on $NATS_URL"

"$COMPONENT_BIN" --nats "$NATS_URL" --lattice "$LATTICE" --id "$COMPONENT_ID" >"$LOGS/demo-component.log" 2>&1 &
PIDS+=($!)
wait_for "${PIDS[-1]}" 10 grep -q "demo component serving" "$LOGS/demo-component.log" ||
  fail "the demo component did not start"

# max_content_len admits the 1 GiB upload. timeout_ms: the component answers /proxy/count
# only after the whole body, so the response head of the upload comes after all of it.
HOST_DATA=$(cat <<EOF
{"host_id":"N$(random_chars 55)","lattice_rpc_prefix":"$LATTICE","lattice_rpc_url":"$NATS_URL",
 "provider_key":"$PROVIDER_ID","instance_id":"$(cat /proc/sys/kernel/random/uuid)",
 "link_definitions":[{"source_id":"$PROVIDER_ID","target":"$COMPONENT_ID","name":"default",
   "wit_namespace":"wasi","wit_package":"http","interfaces":["incoming-handler"],
   "source_config":{},"target_config":{}}],
 "config":{"address":"127.0.0.1:$PROVIDER_PORT","max_content_len":"2G","timeout_ms":"60000"},
 "log_level":"warn"}
EOF
)
# Host data as a wasmCloud host writes it: one line of base64 JSON, CRLF, then EOF.
printf '%s\r\n' "$(printf '%s' "$HOST_DATA" | base64 -w0)" | "$PROVIDER_BIN" >"$LOGS/http-server.log" 2>&1 &
PIDS+=($!)
PROVIDER_PID=${PIDS[-1]}

"$GATEWAY_BIN" --nats "$NATS_URL" --lattice "$LATTICE" --target "$COMPONENT_ID" \
  --address "127.0.0.1:$GATEWAY_PORT" >"$LOGS/go-gateway.log" 2>&1 &
PIDS+=($!)
GATEWAY_PID=${PIDS[-1]}

answers() {  # $1 URL, $2 expected body
  [[ "$(curl -s --max-time 2 "$1" 2>/dev/null)" == "$2" ]]
}
wait_for "$PROVIDER_PID" 15 answers "$PROVIDER_URL/" "Hello from the provider!" ||
  fail "the provider did not answer on $PROVIDER_URL"
wait_for "$GATEWAY_PID" 15 answers "$GATEWAY_URL/" "Hello from the provider!" ||
  fail "the Go gateway did not answer on $GATEWAY_URL"

# wrk checks status codes only, so first make sure each path answers what it should.
answers "$PROVIDER_URL/proxy" "Hello from the component!" || fail "provider /proxy gives a wrong answer"
answers "$GATEWAY_URL/proxy" "Hello from the component!" || fail "Go gateway /proxy gives a wrong answer"
head -c 65536 /dev/urandom >"$LOGS/echo.bin"
for url in "$PROVIDER_URL/proxy" "$GATEWAY_URL/proxy"; do
  curl -s --max-time 10 -H 'Content-Type: application/octet-stream' --data-binary "@$LOGS/echo.bin" "$url" |
    cmp -s - "$LOGS/echo.bin" || fail "POST $url does not echo a 64 KiB body"
done

echo "bench: provider $PROVIDER_URL, Go gateway $GATEWAY_URL, nats $NATS_URL; logs in $LOGS" >&2

# ---- streaming: 1 GiB each way through /proxy ----

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

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
    KEEP_LOGS=1
  fi
  echo "bench: stream $key: ${STREAM_RATE[$key]} MiB/s, peak RSS $(mib "${STREAM_PEAK[$key]}") MiB, ${STREAM_NOTE[$key]}" >&2
}

# $1 key, $2 base URL, $3 pid of the forwarding process.
stream_down() {
  local code bytes seconds
  reset_peak_rss "$3"
  read -r code bytes seconds < <(curl -s -o /dev/null --max-time 300 \
    -w '%{http_code} %{size_download} %{time_total}\n' "$2/proxy/bytes/$STREAM_BYTES" || true)
  record_stream "$1" "$3" "$code" "$bytes" "$seconds" ""
}

# POSTs file $1 ("-": stdin, chunked) to URL $2; prints the answer, a newline, then
# "HTTP_CODE BYTES SECONDS". Expect is off so that no 100-continue wait is part of the time.
upload() {
  curl -s --max-time 300 -X POST -H 'Content-Type: application/octet-stream' -H 'Expect:' \
    -T "$1" -w '\n%{http_code} %{size_upload} %{time_total}' "$2"
}

# $1 key, $2 base URL, $3 pid, $4 "length" (Content-Length, from a sparse file) or
# "chunked" (Transfer-Encoding: chunked, from a pipe).
stream_up() {
  local out answer code seconds moved=""
  reset_peak_rss "$3"
  if [[ "$4" == chunked ]]; then
    out=$(head -c "$STREAM_BYTES" /dev/zero | upload - "$2/proxy/count") || true
  else
    out=$(upload "$LOGS/zero.bin" "$2/proxy/count") || true
  fi
  answer=${out%$'\n'*}
  read -r code _ seconds <<<"${out##*$'\n'}"
  # The component answers "N bytes": what it received. Any other answer is the error.
  local note="answer '${answer//$'\n'/ }'"
  if [[ "$answer" =~ ^([0-9]+)\ bytes$ ]]; then
    moved=${BASH_REMATCH[1]} note=""
  fi
  record_stream "$1" "$3" "$code" "$moved" "$seconds" "$note"
}

truncate -s "$STREAM_BYTES" "$LOGS/zero.bin"
stream_down proxy_down "$PROVIDER_URL" "$PROVIDER_PID"
stream_up proxy_up "$PROVIDER_URL" "$PROVIDER_PID" length
stream_up proxy_up_chunked "$PROVIDER_URL" "$PROVIDER_PID" chunked
stream_down go_down "$GATEWAY_URL" "$GATEWAY_PID"
stream_up go_up "$GATEWAY_URL" "$GATEWAY_PID" length
stream_up go_up_chunked "$GATEWAY_URL" "$GATEWAY_PID" chunked
rm -f "$LOGS/zero.bin"

# ---- request/response: wrk ----

declare -A RPS P50 P99 CPU_PER_1K ERRORS

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

# $1 server (root, proxy, go), $2 body bytes, $3 connections.
run_wrk() {
  local server=$1 body=$2 conns=$3 url pid key out ticks
  case "$server" in
  root) url="$PROVIDER_URL/" pid=$PROVIDER_PID ;;
  proxy) url="$PROVIDER_URL/proxy" pid=$PROVIDER_PID ;;
  go) url="$GATEWAY_URL/proxy" pid=$GATEWAY_PID ;;
  esac
  key="$server $body $conns"
  local args=(-t"$((conns < 2 ? conns : 2))" -c"$conns" -d"${RUN_SECONDS}s" --latency --timeout 10s)
  if ((body > 0)); then args+=(-s "$BENCH_DIR/wrk_post.lua"); fi
  kill -0 "$pid" 2>/dev/null || fail "the process behind $url (pid $pid) is gone"
  ticks=$(cpu_ticks "$pid")
  out=$(BENCH_BODY_BYTES=$body wrk "${args[@]}" "$url" 2>&1) || fail "wrk failed on $url: $out"
  ticks=$(($(cpu_ticks "$pid") - ticks))
  printf '%s\n' "$out" >"$LOGS/wrk-$server-$body-$conns.txt"

  local rps requests p50 p99 non2xx socket detail
  read -r rps requests p50 p99 non2xx socket detail < <(printf '%s\n' "$out" | parse_wrk)
  [[ -n "$rps" && -n "$requests" ]] || fail "could not read wrk's output for $url: $out"
  RPS[$key]=$rps P50[$key]=$p50 P99[$key]=$p99
  CPU_PER_1K[$key]=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$requests" \
    'BEGIN { printf "%.3f", (n > 0) ? t / hz / n * 1000 : 0 }')
  ERRORS[$key]=0
  if ((non2xx > 0 || socket > 0)); then
    ERRORS[$key]="non-2xx $non2xx; socket $socket ($detail)"
    KEEP_LOGS=1
  fi
  echo "bench: $server $(request_name "$body") c=$conns: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors ${ERRORS[$key]}" >&2
}

request_name() {  # $1 body bytes
  case "$1" in
  0) echo "GET" ;;
  *) if (($1 % 1048576 == 0)); then echo "POST $(($1 / 1048576)) MiB"
     elif (($1 % 1024 == 0)); then echo "POST $(($1 / 1024)) KiB"
     else echo "POST $1 B"; fi ;;
  esac
}

# The Go gateway runs last: when wrk stops, the gateway abandons its queued calls, and the
# component's workers keep waiting for their params (up to its 30 s idle timeout), which
# would stall whatever runs next.
for body in "${BODY_SIZES[@]}"; do
  for conns in "${CONNECTIONS[@]}"; do
    run_wrk root "$body" "$conns"
    run_wrk proxy "$body" "$conns"
  done
done
for body in "${BODY_SIZES[@]}"; do
  for conns in "${CONNECTIONS[@]}"; do run_wrk go "$body" "$conns"; done
done
PROVIDER_PEAK_AFTER_WRK=$(peak_rss_kib "$PROVIDER_PID")
provider_warnings=$(grep -c . "$LOGS/http-server.log" || true)

# ---- report ----

ratio() {  # $1 / $2 with two decimals, "-" without a denominator
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'
}
at_least() {  # "met" when $1 >= $2
  awk -v a="$1" -v b="$2" 'BEGIN { print ((a >= b) ? "met" : "NOT met") }'
}
below() {  # "met" when $1 < $2
  awk -v a="$1" -v b="$2" 'BEGIN { print ((a < b) ? "met" : "NOT met") }'
}

VERSIONS="source $(git -C "$BENCH_DIR/.." describe --always --dirty 2>/dev/null || echo unknown)"
VERSIONS+="; $(g++ --version 2>/dev/null | head -n 1 || true)"
VERSIONS+="; wrk $(wrk --version 2>&1 | awk 'NR == 1 { print $2 }' || true)"
VERSIONS+="; nats-server $(nats-server --version | awk '{ print $2 }')"
VERSIONS+="; Go gateway built with $(go version 2>/dev/null | awk '{ print $3 }' || true)"
VERSIONS+="; curl $(curl --version | awk 'NR == 1 { print $2 }')"
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)

results_table() {
  echo "| Request | Path | Conns | req/s | p50 ms | p99 ms | /proxy : / | CPU s / 1k req | Errors | Go req/s | Go p99 ms | Go CPU s / 1k req | ours : Go |"
  echo "|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|"
  local body conns server key root go
  for body in "${BODY_SIZES[@]}"; do
    for server in root proxy; do
      for conns in "${CONNECTIONS[@]}"; do
        key="$server $body $conns" root="root $body $conns" go="go $body $conns"
        if [[ "$server" == root ]]; then
          echo "| $(request_name "$body") | \`/\` | $conns | ${RPS[$key]} | ${P50[$key]} | ${P99[$key]} | | ${CPU_PER_1K[$key]} | ${ERRORS[$key]} | | | | |"
        else
          echo "| $(request_name "$body") | \`/proxy\` | $conns | ${RPS[$key]} | ${P50[$key]} | ${P99[$key]} |" \
            "$(ratio "${RPS[$key]}" "${RPS[$root]}") | ${CPU_PER_1K[$key]} | ${ERRORS[$key]} |" \
            "${RPS[$go]} | ${P99[$go]} | ${CPU_PER_1K[$go]} | $(ratio "${RPS[$key]}" "${RPS[$go]}") |"
        fi
      done
    done
  done
}

go_errors() {  # the Go runs that had errors, one line each
  local body conns key
  for body in "${BODY_SIZES[@]}"; do
    for conns in "${CONNECTIONS[@]}"; do
      key="go $body $conns"
      [[ "${ERRORS[$key]}" == 0 ]] || echo "- Go \`/proxy\` $(request_name "$body") at $conns connections: ${ERRORS[$key]}"
    done
  done
}

stream_table() {
  echo "| Through | Direction | MiB/s | Peak RSS MiB | Result |"
  echo "|---|---|--:|--:|---|"
  local row through key direction
  for row in "provider proxy_down down" "provider proxy_up up_(Content-Length)" "provider proxy_up_chunked up_(chunked)" \
    "Go_gateway go_down down" "Go_gateway go_up up_(Content-Length)" "Go_gateway go_up_chunked up_(chunked)"; do
    read -r through key direction <<<"$row"
    echo "| ${through//_/ } | ${direction//_/ } | ${STREAM_RATE[$key]} | $(mib "${STREAM_PEAK[$key]}") | ${STREAM_NOTE[$key]} |"
  done
}

# Lowest ours:Go ratio over GET and POST 1 KiB at every connection count, with where.
lowest_go_ratio() {
  local body conns r
  for body in 0 1024; do
    for conns in "${CONNECTIONS[@]}"; do
      r=$(ratio "${RPS[proxy $body $conns]}" "${RPS[go $body $conns]}")
      echo "$r $(request_name "$body") at $conns connections"
    done
  done | sort -g | head -n 1
}

# One streaming target: $1 text, $2 stream key, $3 "rss" or "rate".
stream_target() {
  local text=$1 key=$2 what=$3 measured verdict
  if [[ "$what" == rss ]]; then
    measured="$(mib "${STREAM_PEAK[$key]}") MiB" verdict=$(below "${STREAM_PEAK[$key]}" 65536)
  else
    measured="${STREAM_RATE[$key]} MiB/s" verdict=$(awk -v r="${STREAM_RATE[$key]}" 'BEGIN { print ((r > 200) ? "met" : "NOT met") }')
  fi
  [[ "${STREAM_NOTE[$key]}" == ok ]] || verdict="NOT met (the transfer failed)"
  echo "| $text | $measured | $verdict |"
}

targets_table() {
  local share p99 go32 lowest lowest_where
  share=$(ratio "${RPS[proxy 0 32]}" "${RPS[root 0 32]}")
  p99=${P99[proxy 0 8]}
  go32=$(ratio "${RPS[proxy 0 32]}" "${RPS[go 0 32]}")
  read -r lowest lowest_where <<<"$(lowest_go_ratio)"
  echo "| Target | Measured | |"
  echo "|---|---|---|"
  echo "| \`/proxy\` GET >= 30% of \`/\` GET at 32 connections | $(awk -v r="$share" 'BEGIN { printf "%.0f%%", r * 100 }') | $(at_least "$share" 0.30) |"
  echo "| \`/proxy\` GET p99 < 5 ms at 8 connections | $p99 ms | $(below "$p99" 5) |"
  stream_target "1 GiB down: provider peak RSS < 64 MiB" proxy_down rss
  stream_target "1 GiB up (Content-Length): provider peak RSS < 64 MiB" proxy_up rss
  stream_target "1 GiB up (chunked): provider peak RSS < 64 MiB" proxy_up_chunked rss
  stream_target "1 GiB down > 200 MiB/s" proxy_down rate
  stream_target "1 GiB up (Content-Length) > 200 MiB/s" proxy_up rate
  stream_target "1 GiB up (chunked) > 200 MiB/s" proxy_up_chunked rate
  echo "| \`/proxy\` >= 3x Go gateway \`/proxy\` (GET, 32 connections) | ${go32}x | $(at_least "$go32" 3) |"
  echo "| \`/proxy\` >= 3x Go gateway \`/proxy\` (lowest over GET and POST 1 KiB rows) | ${lowest}x ($lowest_where) | $(at_least "$lowest" 3) |"
}

{
  echo "# Benchmark results"
  echo
  echo "Written by \`make bench\` (bench/run.sh); everything on one machine over loopback."
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Machine: $(nproc) cores ($cpu_model), $(uname -sr); load average before the runs: $LOAD_BEFORE"
  echo "- Versions: $VERSIONS"
  echo "- wrk: ${RUN_SECONDS} s per run, 1 thread at 1 connection and 2 threads otherwise, request timeout 10 s;" \
    "POST bodies via bench/wrk_post.lua (the component echoes them, so the response is as large)."
  echo "- Provider config: max_content_len 2G, timeout_ms 60000, log_level warn. CPU is the forwarding process only" \
    "(the provider, or the Go gateway), from /proc/PID/stat; nats-server and the component run on the same cores."
  echo
  echo "## Requests"
  echo
  results_table
  echo
  echo "Errors are wrk's \"Non-2xx or 3xx responses\" and socket errors (connect, read, write, timeout)."
  go_error_lines=$(go_errors)
  if [[ -n "$go_error_lines" ]]; then
    echo "Go gateway runs with errors:"
    echo
    echo "$go_error_lines"
  fi
  echo
  echo "## Streaming 1 GiB through \`/proxy\`"
  echo
  echo "Down: \`GET /proxy/bytes/$STREAM_BYTES\`. Up: \`POST /proxy/count\` (the component answers \"N bytes\"), with" \
    "Content-Length and chunked. Peak RSS is VmHWM of the forwarding process, reset before each transfer."
  echo
  stream_table
  echo
  echo "Provider peak RSS over the whole run (including 128 connections x 1 MiB POSTs): $(mib "$PROVIDER_PEAK_AFTER_WRK") MiB."
  echo
  echo "## Targets"
  echo
  targets_table
  echo
  echo "![throughput vs connections](throughput.png)"
  if ((provider_warnings > 0)); then
    echo
    echo "## Provider log (log_level warn): $provider_warnings lines, the last ones"
    echo
    echo '```'
    tail -n 20 "$LOGS/http-server.log"
    echo '```'
  fi
  # The tuning history is written by hand; each run keeps it under the fresh numbers.
  if [[ -f "$BENCH_DIR/tuning.md" ]]; then
    echo
    cat "$BENCH_DIR/tuning.md"
  fi
} >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"

for conns in "${CONNECTIONS[@]}"; do
  echo "$conns ${RPS[root 0 $conns]} ${RPS[proxy 0 $conns]} ${RPS[go 0 $conns]} ${RPS[proxy 1024 $conns]}"
done >"$LOGS/throughput.dat"
gnuplot -e "datafile='$LOGS/throughput.dat'; outfile='$PLOT'; subtitle='$(nproc) cores, $cpu_model, $RUN_SECONDS s per point, $(date -u +%Y-%m-%d)'" \
  "$BENCH_DIR/plot.gp" || fail "gnuplot could not draw $PLOT"

cat "$RESULTS"
echo
echo "bench: wrote $RESULTS and $PLOT" >&2
