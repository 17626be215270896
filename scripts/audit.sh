#!/usr/bin/env bash
# Audits Cargo.lock against the RustSec advisory database with cargo-audit
# (installed with `cargo install --locked` when missing), offline: it never
# fetches the database, which lives in a git repository this project's
# machines cannot reach. It reads the first database found of
#   $SWITCHYARD_ADVISORY_DB, ../shared/advisory-db (beside the checkout),
#   ~/.cargo/advisory-db (cargo-audit's own place),
# each a checkout of the advisory-db repository (its crates/ folder is what
# counts). Without one it says so on one line and exits 0. A vulnerability
# in any crate of Cargo.lock fails it; warnings (unmaintained, yanked) are
# printed.
set -euo pipefail
cd "$(dirname "$0")/.."

db=""
for candidate in "${SWITCHYARD_ADVISORY_DB:-}" ../shared/advisory-db "$HOME/.cargo/advisory-db"; do
    if [ -n "$candidate" ] && [ -d "$candidate/crates" ]; then
        db="$candidate"
        break
    fi
done
if [ -z "$db" ]; then
    echo "audit: SKIPPED: no RustSec advisory database here (looked in \$SWITCHYARD_ADVISORY_DB, ../shared/advisory-db, ~/.cargo/advisory-db) and it cannot be fetched from this machine"
    exit 0
fi

if ! cargo audit --version >/dev/null 2>&1; then
    echo "audit: installing cargo-audit"
    cargo install --locked --quiet cargo-audit
fi

# How old the database is: its last commit, else its newest file.
if stamp=$(git -C "$db" log -1 --format=%cs 2>/dev/null) && [ -n "$stamp" ]; then
    :
else
    stamp=$(find "$db/crates" -name '*.md' -printf '%TY-%Tm-%Td\n' | sort | tail -1)
fi
echo "audit: RustSec advisory database at $db, as of $stamp"
cargo audit --no-fetch --db "$db" --file Cargo.lock
