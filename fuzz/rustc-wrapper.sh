#!/usr/bin/env bash
# RUSTC_WRAPPER for the fuzz build (scripts/fuzz.sh sets it): the crates
# below are compiled without libFuzzer's coverage instrumentation, which
# cargo-fuzz adds to every crate. Big-number arithmetic: its comparison
# hooks took four fifths of the time of an RSA decryption. The wasm engine
# and the TLS and CLI stacks: no target calls them, and they are most of
# the build.
rustc=$1
shift
name=
prev=
for a in "$@"; do
    [ "$prev" = --crate-name ] && name=$a
    prev=$a
done
case $name in
num_bigint_dig | cranelift_* | wasmtime* | wasmparser | wasmprinter | wit_* | wasm_* | \
    pulley_* | regalloc2 | gimli | object | rustls | ring | clap* | tracing_subscriber | \
    regex_* | tokio)
    args=()
    for a in "$@"; do
        case $a in
        -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-*) ;;
        *) args+=("$a") ;;
        esac
    done
    exec "$rustc" "${args[@]}"
    ;;
esac
exec "$rustc" "$@"
