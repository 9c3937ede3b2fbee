#!/usr/bin/env bash
# Before/after for a change to the provider: wrk on `/` (answered by the provider) and `/proxy`
# (forwarded to the component) at 1, 8, 32 and 128 connections, for this tree's provider and
# for the one built from a baseline git revision, on ONE nats-server and ONE component, in
# interleaved rounds so that the machine's noise falls on both alike. Prints req/s and p99 per
# point and round.
#
# Usage: bench/ab.sh BUILD_DIR BASELINE_REVISION      (`make bench-ab BASELINE=<revision>`)
#   AB_ROUNDS=2     rounds (each: baseline, then this tree)
#   AB_SECONDS=4    length of each wrk run
# The baseline is built once into BUILD_DIR/ab/<commit> from `git archive` of that revision.
set -euo pipefail

BUILD=${1:?usage: bench/ab.sh BUILD_DIR BASELINE_REVISION}
BASELINE=${2:?usage: bench/ab.sh BUILD_DIR BASELINE_REVISION}
ROUNDS=${AB_ROUNDS:-2}
RUN_SECONDS=${AB_SECONDS:-4}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT_NAME=bench-ab
# shellcheck source=../demo/lib.sh
source "$ROOT/demo/lib.sh"
trap cleanup INT TERM EXIT

commit=$(git -C "$ROOT" rev-parse --verify "$BASELINE^{commit}")
baseline_dir="$BUILD/ab/$commit"
if [[ ! -x "$baseline_dir/build/http-server" ]]; then
  echo "bench-ab: building the provider of $BASELINE ($commit)" >&2
  rm -rf "$baseline_dir"
  mkdir -p "$baseline_dir"
  git -C "$ROOT" archive "$commit" | tar -x -C "$baseline_dir"
  make -C "$baseline_dir" build/http-server >"$LOGS/baseline-build.log" 2>&1 || fail "baseline build failed"
fi
declare -A BIN=([before]="$baseline_dir/build/http-server" [after]="$BUILD/http-server")

nats_port=$(free_port)
http_port=$(free_port "$nats_port")
nats-server -a 127.0.0.1 -p "$nats_port" >"$LOGS/nats.log" 2>&1 &
PIDS+=($!)
wait_for "${PIDS[0]}" 5 port_in_use "$nats_port" || fail "nats-server did not start"
"$BUILD/demo-component" --nats "nats://127.0.0.1:$nats_port" --lattice "$LATTICE" --id "$COMPONENT_ID" \
  >"$LOGS/component.log" 2>&1 &
PIDS+=($!)

echo "| round | build | path | connections | req/s | p99 |"
echo "| --: | --- | --- | --: | --: | --: |"
for ((round = 1; round <= ROUNDS; round++)); do
  for build in before after; do
    "${BIN[$build]}" --nats "nats://127.0.0.1:$nats_port" --lattice "$LATTICE" --address "127.0.0.1:$http_port" \
      --target "$COMPONENT_ID" >"$LOGS/provider-$build.log" 2>&1 &
    provider=$!
    PIDS+=("$provider")
    wait_for "$provider" 10 port_in_use "$http_port" || fail "the $build provider did not listen"
    for path in / /proxy; do
      for conns in 1 8 32 128; do
        out=$(wrk -t $((conns < 2 ? 1 : 2)) -c "$conns" -d "${RUN_SECONDS}s" --latency \
          "http://127.0.0.1:$http_port$path" 2>&1)
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
        echo "| $round | $build | \`$path\` | $conns | $rps | $p99 |"
      done
    done
    kill -TERM "$provider"
    wait "$provider" 2>/dev/null || true
  done
done
