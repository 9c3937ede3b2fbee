#!/bin/sh
# Runs libFuzzer targets one after another, each for SECONDS on a scratch copy of its seed
# corpus (fuzz/corpus/<target>), so that the committed seeds stay small. Stops at the first
# target that finds something; libFuzzer writes the input to <bin-dir>/<target>-crash-*.
#
#   fuzz/run.sh BIN_DIR SECONDS TARGET...      (from the repository root; `make fuzz` calls it)
set -eu

bin_dir=$1
seconds=$2
shift 2

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for target in "$@"; do
  # Large enough for every seed and for the limits each parser enforces (a NATS control line
  # above 4 KiB, JSON nested a few thousand deep), small enough to keep executions fast.
  case $target in
    wrpc_decoder) max_len=4096 ;;
    nats_parser) max_len=8192 ;;
    host_data) max_len=16384 ;;
    http_head) max_len=70000 ;;
    chunked) max_len=8192 ;;
    stream_response_head) max_len=70000 ;;
    *) echo "unknown fuzz target $target" >&2; exit 2 ;;
  esac
  dict=
  [ -f "fuzz/$target.dict" ] && dict="-dict=fuzz/$target.dict"
  mkdir "$scratch/$target"
  cp fuzz/corpus/"$target"/* "$scratch/$target/"
  echo "== fuzz_$target for ${seconds}s"
  "$bin_dir/fuzz_$target" "$scratch/$target" $dict -max_total_time="$seconds" -max_len="$max_len" \
    -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$bin_dir/$target-"
done
