#!/usr/bin/env bash
# Builds the C policy: a freestanding wasm32 core module (Debian's clang and
# lld; no libc, no WASI), made a component by tools/componentize.
# Usage: ./build.sh [OUT] (default: policy.wasm here).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$here/policy.wasm}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
clang --target=wasm32 -O2 -nostdlib -ffreestanding -Wall -Wextra -Werror \
    -Wl,--no-entry -Wl,-z,stack-size=65536 -o "$tmp/core.wasm" "$here/policy.c"
cargo build -q --manifest-path "$root/Cargo.toml" -p componentize
"$root/target/debug/componentize" --wit "$root/wit" --world router "$tmp/core.wasm" -o "$out"
