#!/usr/bin/env bash
# Installs what Switchyard's demo and tests need and is missing: MariaDB
# server and client, python3, python3-venv, nodejs, npm, a C compiler,
# clang and lld (Debian packages) and the wasm32-wasip2 Rust target.
# Safe to run again: it only installs what is not there.
set -euo pipefail

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is missing; install Rust (rustup) first" >&2
    exit 1
fi

missing=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
command -v mariadb-install-db >/dev/null 2>&1 || missing+=(mariadb-server)
# The Python example policy is built with componentize-py in a virtualenv.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# The JavaScript example policy is built with componentize-js from npm.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# aws-lc-rs (caching_sha2_password's RSA) compiles AWS-LC's C sources
# with the system's C compiler; no cmake needed.
command -v cc >/dev/null 2>&1 || missing+=(gcc)
# The C example policy is built with clang and lld (wasm-ld).
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v wasm-ld >/dev/null 2>&1 || missing+=(lld)
# The TLS tests make certificates and read them back with openssl.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The fleet tests: HAProxy sends the PROXY protocol header in front of
# Switchyard; Redis is the shared store several instances use.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]} from Debian's packages"
    as_root apt-get update -qq
    # The package's own service is not needed (the harness starts its own
    # servers); policy-rc.d keeps apt from starting it where that applies.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "setup: adding the wasm32-wasip2 Rust target"
    rustup target add wasm32-wasip2
fi
