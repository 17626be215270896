#!/usr/bin/env bash
# Runs every test: unit and sans-IO codec tests, and the end-to-end tests
# against real MariaDB servers (a primary and two GTID replicas the harness
# starts on free loopback ports) with real clients.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
PATH="$PATH:/usr/sbin"
cargo build -q --release --target wasm32-wasip2 -p default-policy -p misbehave-policy -p by-client-policy -p replica-fallback-policy -p forbidden-policy
# The Python example policy (componentize-py from PyPI), rebuilt when its
# source changes.
python_policy=target/examples/python_policy.wasm
if [ ! -f "$python_policy" ] || [ examples/policies/python/app.py -nt "$python_policy" ]; then
    mkdir -p target/examples
    examples/policies/python/build.sh "$PWD/$python_policy"
fi
cargo test --workspace "$@"
