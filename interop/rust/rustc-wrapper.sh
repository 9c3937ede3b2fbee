#!/usr/bin/env bash
# RUSTC_WRAPPER of the interop build (Makefile: interop-build). wasmcloud-host 0.27.1 does not
# compile with rustc 1.95:
#   error: queries overflow the depth limit!
#   = help: consider increasing the recursion limit by adding a `#![recursion_limit = "256"]`
#     attribute to your crate (`wasmcloud_host`)
#   = note: ... when computing layout of `{async block@.../wasmcloud-host-0.27.1/src/wasmbus/ctl.rs:309:15}`
# so this adds exactly that attribute to that crate (-Zcrate-attr, allowed for it alone by
# RUSTC_BOOTSTRAP=<crate>); every other crate is compiled unchanged.
rustc=$1
shift
case " $* " in
  *" --crate-name wasmcloud_host "*)
    RUSTC_BOOTSTRAP=wasmcloud_host exec "$rustc" "$@" '-Zcrate-attr=recursion_limit="256"' ;;
esac
exec "$rustc" "$@"
