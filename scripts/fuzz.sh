#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer, on stable Rust:
# no sanitizer) and runs each in turn, one at a time, from the seeds in
# fuzz/corpus/<target>/ plus what earlier runs found (fuzz/target/corpus/).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   each target N s (default 60)
#   scripts/fuzz.sh --total SECONDS [TARGET...]        a total budget, split evenly
#   scripts/fuzz.sh --runs N [TARGET...]               each target N executions
#
# A crash stops that target, leaves its input in fuzz/artifacts/<target>/
# and makes the script fail (after the other targets ran). Reproduce one
# with: fuzz/target/x86_64-unknown-linux-gnu/release/<target> <input>
# Installs cargo-fuzz with `cargo install --locked` when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=time
budget=60
case "${1:-}" in
--total) mode=total budget=${2:?--total SECONDS}; shift 2 ;;
--runs) mode=runs budget=${2:?--runs N}; shift 2 ;;
'' | *[!0-9]*) ;;
*) budget=$1; shift ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked --quiet cargo-fuzz@0.13.2
fi
# libFuzzer itself is C++, built by libfuzzer-sys.
if ! command -v c++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq g++ >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq g++ >/dev/null; fi
fi

triple=$(rustc -vV | sed -n 's/^host: //p')
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cd fuzz && cargo fuzz list)
one=()
[ ${#targets[@]} -ne 1 ] || one=("${targets[0]}")
# The wrapper's hash in the flags: cargo rebuilds when the wrapper changes.
wrapper=$(sha1sum fuzz/rustc-wrapper.sh | cut -c1-12)
(cd fuzz && RUSTC_WRAPPER="$PWD/rustc-wrapper.sh" \
    RUSTFLAGS="${RUSTFLAGS:-} --cfg switchyard_fuzz_wrapper=\"$wrapper\"" \
    cargo fuzz build --sanitizer none --target "$triple" "${one[@]}")

case $mode in
time) limit=(-max_total_time="$budget") ;;
total) limit=(-max_total_time="$((budget / ${#targets[@]} > 0 ? budget / ${#targets[@]} : 1))") ;;
runs) limit=(-runs="$budget") ;;
esac

failed=()
summary=()
for t in "${targets[@]}"; do
    work=fuzz/target/corpus/$t
    mkdir -p "$work" "fuzz/artifacts/$t" "fuzz/corpus/$t"
    log=fuzz/target/$t.log
    started=$SECONDS
    status=0
    "fuzz/target/$triple/release/$t" "${limit[@]}" -print_final_stats=1 -timeout=20 \
        -rss_limit_mb=4096 -artifact_prefix="fuzz/artifacts/$t/" \
        "$work" "fuzz/corpus/$t" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    line="$t: ${execs:-?} executions in $((SECONDS - started)) s"
    if [ "$status" != 0 ]; then
        failed+=("$t")
        line+=", CRASH (exit $status)"
        grep -E '^(==[0-9]+==|thread .* panicked|SUMMARY|artifact_prefix)|panicked at|Test unit written' "$log" | head -20 >&2 || true
    else
        line+=", 0 crashes"
    fi
    echo "fuzz: $line"
    summary+=("$line")
done
echo "fuzz: ${#targets[@]} targets, $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} crashed${failed[*]:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
