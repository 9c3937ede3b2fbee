#!/usr/bin/env bash
# Builds the interop Wasm component (wasi:http/incoming-handler in JavaScript) with the pinned
# componentize-js from package-lock.json:  interop/component/build.sh OUT_DIR
# OUT_DIR gets wit/ (world.wit + the wasi WIT packages from jco) and component.wasm.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)

stamp="$out/npm.stamp"
if [ ! -f "$stamp" ] || [ "$here/package-lock.json" -nt "$stamp" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$stamp"
fi

wasi_wit="$here/node_modules/@bytecodealliance/jco/lib/wit/builtin/0.2.12"
rm -rf "$out/wit" && mkdir -p "$out/wit/deps"
cp "$here/wit/world.wit" "$out/wit/"
for pkg in cli clocks filesystem http io random sockets; do
  cp -r "$wasi_wit/wasi-$pkg" "$out/wit/deps/$pkg"
done

if [ ! -f "$out/component.wasm" ] || [ "$here/component.js" -nt "$out/component.wasm" ] \
   || [ "$here/wit/world.wit" -nt "$out/component.wasm" ] || [ "$stamp" -nt "$out/component.wasm" ]; then
  # componentize-js reads the WIT inside a WASI sandbox that sees only the working directory
  (cd "$out" && "$here/node_modules/.bin/componentize-js" "$here/component.js" --wit wit \
     --world-name component -o component.wasm.tmp)
  mv "$out/component.wasm.tmp" "$out/component.wasm"
fi
