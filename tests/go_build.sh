#!/usr/bin/env bash
# Builds the Go program in SOURCE_DIR (tests/interop: the nats.go peer of the interop tests;
# bench/go-gateway and bench/nats-probe: the benchmark's gateway and NATS probe) to OUTPUT_BINARY, offline, in
# GOPATH mode against Debian's packaged Go sources
# (apt-get install golang-go golang-github-nats-io-go-nats-dev).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 SOURCE_DIR OUTPUT_BINARY" >&2
  exit 2
fi
src=$1
out=$2
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

# GOPATH mode: no go.mod, no module proxy; imports resolve from Debian's tree.
export GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOPROXY=off
# Without HOME (e.g. under env -i) Go has no build cache; use a throwaway one.
if [ "$(go env GOCACHE)" = off ]; then
  GOCACHE=$(mktemp -d)
  export GOCACHE
  trap 'rm -rf "$GOCACHE"' EXIT
fi
cd "$src" && go build -o "$out" .
