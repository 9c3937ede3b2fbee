# What demo/run.sh, bench/run.sh and interop/run.sh share (sourced; each sets SCRIPT_NAME first).

# The names wadm.yaml gives the provider and the component, and the lattice.
PROVIDER_ID="http-http_provider"
COMPONENT_ID="http-http_component"
LATTICE="default"

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/wrpc-http-$SCRIPT_NAME.XXXXXX")  # every process's log
PIDS=()                                                           # started processes, in start order
KEEP_LOGS=${KEEP_LOGS:-0}  # keep $LOGS at the end; set when something fails

# True when something accepts connections on 127.0.0.1:$1.
port_in_use() {
  timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# A port nobody listens on, other than the ones given.
free_port() {
  local port tries
  for ((tries = 0; tries < 200; tries++)); do
    port=$((20000 + RANDOM % 12000))  # below the ephemeral range (32768+)
    [[ " $* " == *" $port "* ]] && continue
    port_in_use "$port" || { echo "$port"; return 0; }
  done
  echo "$SCRIPT_NAME: found no free port" >&2
  return 1
}

# Waits up to $2 seconds for the command "$3..." to succeed, while process $1 lives.
wait_for() {
  local pid=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  while ((SECONDS < deadline)); do
    "$@" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

stop_all() {
  local pid i
  # Reverse start order: provider, component, then NATS.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[i]}" 2>/dev/null || true
  done
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# $1 characters of the nkeys base32 alphabet (ids that look like the host's).
random_chars() {
  LC_ALL=C tr -dc 'A-Z2-7' </dev/urandom | head -c "$1" || true
}

# Host data as a wasmCloud host writes it on a provider's stdin: one line of base64 JSON,
# CRLF, then EOF (the pipe's writer exits).
host_data_line() {  # $1 JSON
  printf '%s\r\n' "$(printf '%s' "$1" | base64 -w0)"
}
# A link definition from provider $1 to $COMPONENT_ID, named $2, with source_config $3.
link() {
  printf '{"source_id":"%s","target":"%s","name":"%s","wit_namespace":"wasi","wit_package":"http",
    "interfaces":["incoming-handler"],"source_config":%s,"target_config":{}}' "$1" "$COMPONENT_ID" "$2" "$3"
}
# Host data for provider $1 on the lattice at $NATS_URL: config $2, links $3 (the inside of a
# JSON array), log level $4 (default info).
host_data() {
  cat <<EOF
{"host_id":"N$(random_chars 55)","lattice_rpc_prefix":"$LATTICE","lattice_rpc_url":"$NATS_URL",
 "provider_key":"$1","instance_id":"$(cat /proc/sys/kernel/random/uuid)",
 "env_values":{},"link_definitions":[$3],"config":$2,"log_level":"${4:-info}"}
EOF
}

# Starts the demo component binary $1 as $COMPONENT_ID on the lattice at NATS URL $2 (log in
# $LOGS/demo-component.log) and waits until it serves; its pid is ${PIDS[-1]}.
start_demo_component() {
  "$1" --nats "$2" --lattice "$LATTICE" --id "$COMPONENT_ID" >"$LOGS/demo-component.log" 2>&1 &
  PIDS+=($!)
  wait_for "${PIDS[-1]}" 10 grep -qs "demo component serving" "$LOGS/demo-component.log" ||
    fail "the demo component did not start"
}

# Stops everything; keeps the logs in $LOGS when KEEP_LOGS is set.
cleanup() {
  trap - INT TERM EXIT
  stop_all
  if ((KEEP_LOGS)); then
    echo "$SCRIPT_NAME: logs kept in $LOGS" >&2
  else
    rm -rf "$LOGS"
  fi
}

# Says what failed, shows the end of each log, keeps the logs and exits 1.
fail() {
  echo "$SCRIPT_NAME: $*" >&2
  local f
  for f in "$LOGS"/*.log; do
    [[ -s "$f" ]] || continue
    echo "---- $(basename "$f") (last lines) ----" >&2
    tail -n 15 "$f" >&2
  done
  KEEP_LOGS=1
  exit 1
}
