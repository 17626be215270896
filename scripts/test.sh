#!/usr/bin/env bash
# Runs every test: unit and sans-IO codec tests, and the end-to-end tests
# against real MariaDB servers (a primary and two GTID replicas the harness
# starts on free loopback ports) with real clients.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
PATH="$PATH:/usr/sbin"
cargo build -q --release --target wasm32-wasip2 -p default-policy -p misbehave-policy -p by-client-policy -p replica-fallback-policy -p forbidden-policy
cargo test --workspace "$@"
