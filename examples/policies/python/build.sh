#!/usr/bin/env bash
# Builds the Python policy with componentize-py. Usage: ./build.sh [OUT]
# (default: policy.wasm here). componentize-py comes from PATH, or is
# installed from PyPI into a virtualenv under the workspace's target/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$here/policy.wasm}"
version=0.25.1
tool="$(command -v componentize-py || true)"
if [ -z "$tool" ] || ! "$tool" --version | grep -q "$version"; then
    venv="$root/target/pyvenv"
    if [ ! -x "$venv/bin/componentize-py" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "componentize-py==$version"
    fi
    tool="$venv/bin/componentize-py"
fi
cd "$here"
"$tool" -d "$root/wit" -w router componentize app -o "$out"
