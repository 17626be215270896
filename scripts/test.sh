#!/usr/bin/env bash
# Runs every test: unit and sans-IO codec tests, and the end-to-end tests
# against real MariaDB servers (a primary and two GTID replicas the harness
# starts on free loopback ports) with real clients.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/compat-deps.sh
PATH="$PATH:/usr/sbin"
cargo build -q --release --target wasm32-wasip2 -p default-policy -p misbehave-policy -p by-client-policy -p replica-fallback-policy -p forbidden-policy -p hint-policy
# The example policies in other languages (componentize-py, Zig and Go from
# PyPI, componentize-js from npm, clang from Debian), rebuilt when their
# source changes.
mkdir -p target/examples
build_example() { # <lang> <source> <out>
    if [ ! -f "$3" ] || [ "examples/policies/$1/$2" -nt "$3" ] \
        || [ "examples/policies/$1/build.sh" -nt "$3" ]; then
        "examples/policies/$1/build.sh" "$PWD/$3"
    fi
}
build_example python app.py target/examples/python_policy.wasm
build_example javascript policy.js target/examples/js_policy.wasm
# The per-statement hook in JavaScript (the statement-router world).
js_hook=target/examples/js_statement_policy.wasm
if [ ! -f "$js_hook" ] || [ examples/policies/javascript/statements.js -nt "$js_hook" ] \
    || [ examples/policies/javascript/build.sh -nt "$js_hook" ] || [ wit/policy.wit -nt "$js_hook" ]; then
    examples/policies/javascript/build.sh "$PWD/$js_hook" statements.js statement-router
fi
build_example zig policy.zig target/examples/zig_policy.wasm
build_example c policy.c target/examples/c_policy.wasm
build_example go policy.go target/examples/go_policy.wasm
cargo test --workspace "$@"
