#!/usr/bin/env bash
# Builds the interop component for hosts that serve wasi:http 0.2.0 only (wasmcloud-host 0.20.0):
# app.py, the paths and answers of interop/component/component.js, with componentize-py
# (requirements.txt, in a venv of its own) against the wasi 0.2.0 WIT that host serves, the
# wit/deps of its wasmcloud-runtime 0.4.0 (found with `cargo metadata` on interop/hosts/0.20.0).
#   interop/component-wasi-0.2.0/build.sh OUT_DIR
# OUT_DIR gets venv/, wit/ (world.wit + the wasi packages), src/ (app.py) and component.wasm.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)

stamp="$out/venv.stamp"
if [ ! -f "$stamp" ] || [ "$here/requirements.txt" -nt "$stamp" ]; then
  rm -rf "$out/venv"
  python3 -m venv "$out/venv"
  "$out/venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  touch "$stamp"
fi

runtime_dir=$(cargo metadata --locked --format-version 1 --manifest-path "$here/../hosts/0.20.0/Cargo.toml" |
  python3 -c 'import json, os, sys
packages = json.load(sys.stdin)["packages"]
print(next(os.path.dirname(p["manifest_path"]) for p in packages
           if p["name"] == "wasmcloud-runtime" and p["version"] == "0.4.0"))')
rm -rf "$out/wit" && mkdir -p "$out/wit/deps"
cp "$here/world.wit" "$out/wit/"
for pkg in cli clocks filesystem http io random sockets; do
  cp -r "$runtime_dir/wit/deps/$pkg" "$out/wit/deps/$pkg"
done

if [ ! -f "$out/component.wasm" ] || [ "$here/app.py" -nt "$out/component.wasm" ] \
   || [ "$here/world.wit" -nt "$out/component.wasm" ] || [ "$stamp" -nt "$out/component.wasm" ]; then
  # From a copy in OUT_DIR: componentize-py leaves __pycache__ beside the module it reads.
  rm -rf "$out/src" && mkdir -p "$out/src" && cp "$here/app.py" "$out/src/"
  (cd "$out/src" && "$out/venv/bin/componentize-py" -d "$out/wit" -w component componentize app \
     -o "$out/component.wasm.tmp")
  mv "$out/component.wasm.tmp" "$out/component.wasm"
fi
