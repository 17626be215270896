#!/usr/bin/env bash
# The end-to-end benchmark: MariaDB, HAProxy (mode tcp) and Switchyard
# (release build, default policy) on this machine, the same workloads against
# each, order alternated over rounds. Writes bench/results/<time>.md and the
# table in the README. Options: --rounds N (3), --seconds S (10), --no-readme.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
need=()
command -v sysbench >/dev/null 2>&1 || need+=(sysbench)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo=sudo; fi
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
PATH="$PATH:/usr/sbin"
exec cargo run -q --release -p switchyard-e2e --bin bench -- "$@"
