#!/usr/bin/env bash
# Builds the JavaScript policy with componentize-js. Usage:
# ./build.sh [OUT [SOURCE WORLD]] (default: policy.wasm here, from policy.js
# for the `router` world; `./build.sh out.wasm statements.js
# statement-router` builds the per-statement example). componentize-js is installed from npm into
# the workspace's target/ if missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$here/policy.wasm}"
source="${2:-policy.js}"
world="${3:-router}"
version=0.23.0
prefix="$root/target/npm"
tool="$prefix/node_modules/.bin/componentize-js"
if [ ! -x "$tool" ]; then
    mkdir -p "$prefix"
    npm install --silent --no-audit --no-fund --prefix "$prefix" "@bytecodealliance/componentize-js@$version"
fi
# HTTP and fetch-event are disabled: a policy may import only WASI basics
# and the host interface (Switchyard refuses anything else).
"$tool" "$here/$source" --wit "$root/wit" --world-name "$world" -d http fetch-event -o "$out"
