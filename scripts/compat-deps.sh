#!/usr/bin/env bash
# Installs the client libraries the compatibility suite (tests/tests/compat.rs)
# drives, where missing: PHP with mysqlnd (mysqli, PDO) and MariaDB
# Connector/J with a JDK from Debian's packages; PyMySQL,
# mysql-connector-python and cryptography from PyPI into target/pyvenv;
# mysql2 from npm into target/npm-clients. The mariadb CLI and mysql_async come with
# scripts/setup.sh and Cargo. Safe to run again: it only installs what is
# not there.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v php >/dev/null 2>&1 || missing+=(php-cli)
{ command -v php >/dev/null 2>&1 && php -m 2>/dev/null | grep -qx mysqli \
    && php -m 2>/dev/null | grep -qx pdo_mysql; } || missing+=(php-mysql)
# javac compiles the Connector/J client; the JDK also runs it.
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
[ -f /usr/share/java/mariadb-java-client.jar ] || missing+=(libmariadb-java)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    echo "compat-deps: installing ${missing[*]} from Debian's packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# Python clients, pinned; the venv is the one componentize-py uses too.
venv="$root/target/pyvenv"
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
py_wanted=(PyMySQL==1.2.4 mysql-connector-python==26.10.0 cryptography==50.0.2)
if ! "$venv/bin/python" - "${py_wanted[@]}" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for req in sys.argv[1:]:
    name, want = req.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
then
    echo "compat-deps: installing ${py_wanted[*]} from PyPI"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${py_wanted[@]}"
fi

# node mysql2, pinned, in a prefix of its own: installing into
# componentize-js's prefix (target/npm) makes npm rearrange that tree, and
# componentize-js then no longer finds preview2-shim.
prefix="$root/target/npm-clients"
mysql2_version=3.24.6
if [ "$(node -p "try{require('$prefix/node_modules/mysql2/package.json').version}catch(e){''}" 2>/dev/null)" != "$mysql2_version" ]; then
    echo "compat-deps: installing mysql2@$mysql2_version from npm"
    mkdir -p "$prefix"
    npm install --silent --no-audit --no-fund --save-exact --prefix "$prefix" "mysql2@$mysql2_version"
fi
