#!/usr/bin/env bash
# Builds the JavaScript policy with componentize-js. Usage: ./build.sh [OUT]
# (default: policy.wasm here). componentize-js is installed from npm into
# the workspace's target/ if missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$here/policy.wasm}"
version=0.23.0
prefix="$root/target/npm"
tool="$prefix/node_modules/.bin/componentize-js"
if [ ! -x "$tool" ]; then
    mkdir -p "$prefix"
    npm install --silent --no-audit --no-fund --prefix "$prefix" "@bytecodealliance/componentize-js@$version"
fi
# HTTP and fetch-event are disabled: a policy may import only WASI basics
# and the host interface (Switchyard refuses anything else).
"$tool" "$here/policy.js" --wit "$root/wit" --world-name router -d http fetch-event -o "$out"
