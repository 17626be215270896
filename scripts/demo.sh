#!/usr/bin/env bash
# Runs Switchyard on a local demo topology: a MariaDB primary (127.0.0.1:13306)
# and two GTID replicas (13307, 13308) started in temp dirs, the default
# policy, and the proxy on 127.0.0.1:6033 (examples/switchyard.toml).
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
PATH="$PATH:/usr/sbin"
exec cargo run -q -p switchyard-e2e --bin demo
