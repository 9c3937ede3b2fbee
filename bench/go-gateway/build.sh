#!/usr/bin/env bash
# Builds go-gateway (the Go comparison gateway of the benchmark) to $1,
# offline, in GOPATH mode against Debian's packaged Go sources
# (apt-get install golang-go golang-github-nats-io-go-nats-dev).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTPUT_BINARY" >&2
  exit 2
fi
out=$1
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# GOPATH mode: no go.mod, no module proxy; imports resolve from Debian's tree.
export GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOPROXY=off
# Without HOME (e.g. under env -i) Go has no build cache; use a throwaway one.
if [ "$(go env GOCACHE)" = off ]; then
  GOCACHE=$(mktemp -d)
  export GOCACHE
  trap 'rm -rf "$GOCACHE"' EXIT
fi
cd "$here" && go build -o "$out" .
