#!/usr/bin/env bash
# Builds the Zig policy: a freestanding wasm32 core module (Zig from PyPI's
# `ziglang` if `zig` is missing), made a component by tools/componentize.
# Usage: ./build.sh [OUT] (default: policy.wasm here).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$here/policy.wasm}"
version=0.17.0
if command -v zig >/dev/null 2>&1 && zig version | grep -qx "$version"; then
    zig=(zig)
else
    venv="$root/target/pyvenv"
    if ! "$venv/bin/python" -c 'import ziglang' >/dev/null 2>&1; then
        [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "ziglang==$version"
    fi
    zig=("$venv/bin/python" -m ziglang)
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && "${zig[@]}" build-exe "$here/policy.zig" -target wasm32-freestanding \
    -fno-entry -rdynamic -O ReleaseSmall -femit-bin="$tmp/core.wasm" )
cargo build -q --manifest-path "$root/Cargo.toml" -p componentize
"$root/target/debug/componentize" --wit "$root/wit" --world router "$tmp/core.wasm" -o "$out"
