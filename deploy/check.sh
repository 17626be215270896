#!/usr/bin/env bash
# Checks the deployment files of deploy/ and examples/switchyard.service,
# statically (nothing is deployed, no image is built). Run from anywhere:
#
#   bash deploy/check.sh
#
#  1. Kubernetes: renders the base and the example overlay (kubectl
#     kustomize, or kustomize; else deploy/checks/kustomize_lite.py, which
#     is also compared with the real one where that exists), validates every
#     object with kubernetes-validate --strict (unknown fields fail) against
#     Kubernetes $K8S_VERSIONS, and checks what a schema cannot see
#     (deploy/checks/manifests.py: probes, preStop drain and the grace
#     period's arithmetic, directory mounts, the configuration in a
#     ConfigMap with no secret in it, the accounts, token and policy files,
#     security contexts, resources, Service/PDB selectors, the fleet store),
#     and, where a build of Switchyard is at hand, has it parse both
#     configurations (`switchyard policy check --config`).
#  2. Prometheus: promtool check rules and promtool test rules.
#  3. Metric names: every metric the rules and the Grafana dashboard read is
#     one host/src renders (deploy/checks/metrics.py), with the dashboard's
#     structure; promtool parses every dashboard expression.
#  4. deploy/Containerfile (dockerfile-parse, deploy/checks/containerfile.py).
#  5. examples/switchyard.service with systemd-analyze verify (any warning
#     fails).
#
# It installs what is missing: kubernetes-validate and dockerfile-parse
# from PyPI, promtool (Debian's prometheus package) and systemd-analyze
# (systemd) with apt-get where that works.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS=(1.30.0 1.37.0)
started=$SECONDS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step() { printf '== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- tools ---------------------------------------------------------------
python3 -c 'import tomllib' 2>/dev/null || { echo "check: needs Python 3.11+ (tomllib)" >&2; exit 1; }
if ! python3 -c 'import kubernetes_validate, dockerfile_parse, yaml' 2>/dev/null; then
    step "installing kubernetes-validate and dockerfile-parse (PyPI)"
    python3 -m pip install -q --disable-pip-version-check \
        'kubernetes-validate==1.37.0' 'dockerfile-parse==2.0.1' 'PyYAML>=6'
fi
apt_missing=()
command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || apt_missing+=(systemd)
if [ ${#apt_missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        step "installing ${apt_missing[*]} (Debian)"
        as_root apt-get update -qq
        # policy-rc.d keeps the prometheus package from starting a server.
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${apt_missing[@]}" >/dev/null
    else
        echo "check: missing ${apt_missing[*]} and no apt-get" >&2
        exit 1
    fi
fi

# --- 1. Kubernetes -------------------------------------------------------
step "rendering deploy/kubernetes"
# The overlay ships its policy in a ConfigMap from policy.wasm, which the
# user builds; render a copy with the built default policy, or a stand-in.
cp -r deploy/kubernetes "$tmp/kubernetes"
policy="$tmp/kubernetes/overlays/example/policy.wasm"
if [ ! -e "$policy" ]; then
    if [ -f target/wasm32-wasip2/release/default_policy.wasm ]; then
        cp target/wasm32-wasip2/release/default_policy.wasm "$policy"
    else
        printf '\0asm\r\0\1\0\377' > "$policy"   # a component header and a non-UTF-8 byte
    fi
fi
# CHECK_RENDERER=lite forces the stand-in (to test it where kubectl exists).
if [ "${CHECK_RENDERER:-}" != lite ] && command -v kubectl >/dev/null 2>&1; then
    render() { kubectl kustomize "$1"; }
    renderer="kubectl kustomize ($(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p'))"
elif [ "${CHECK_RENDERER:-}" != lite ] && command -v kustomize >/dev/null 2>&1; then
    render() { kustomize build "$1"; }
    renderer="kustomize build"
else
    render() { python3 deploy/checks/kustomize_lite.py "$1"; }
    renderer="deploy/checks/kustomize_lite.py (no kubectl or kustomize in use)"
fi
echo "  renderer: $renderer"
rendered=()
for build in base overlays/example; do
    out="$tmp/$(echo "$build" | tr / -).yaml"
    render "$tmp/kubernetes/$build" > "$out"
    if [[ "$renderer" != deploy/checks/* ]]; then
        python3 deploy/checks/kustomize_lite.py "$tmp/kubernetes/$build" > "$out.lite"
        python3 deploy/checks/kustomize_lite.py --compare "$out" "$out.lite"
    fi
    rendered+=("$out")
    echo "  $build: $(grep -c '^kind:' "$out") objects"
done

step "kubernetes-validate --strict (Kubernetes ${K8S_VERSIONS[*]})"
for v in "${K8S_VERSIONS[@]}"; do
    python3 -m kubernetes_validate --strict --quiet -k "$v" "${rendered[@]}"
    echo "  $v: every object passed"
done
# The validator must refuse an unknown field, or the pass above means nothing.
python3 - "${rendered[0]}" "$tmp/unknown-field.yaml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
dep = next(d for d in docs if d["kind"] == "Deployment")
dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
yaml.safe_dump(dep, open(sys.argv[2], "w"))
EOF
if python3 -m kubernetes_validate --strict --quiet -k "${K8S_VERSIONS[0]}" "$tmp/unknown-field.yaml" >/dev/null 2>&1; then
    echo "check: kubernetes-validate accepted an unknown field" >&2
    exit 1
fi

step "manifest invariants"
python3 deploy/checks/manifests.py "${rendered[@]}" | sed "s|$tmp/||"

# Switchyard itself parses the configurations (unknown keys, types,
# validation), where a build of it and of the default policy is at hand
# (scripts/test.sh leaves both); the policy stands in for the pods' own.
sy=$(ls -t target/debug/switchyard target/release/switchyard 2>/dev/null | head -1 || true)
wasm=target/wasm32-wasip2/release/default_policy.wasm
if [ -n "$sy" ] && [ -f "$wasm" ]; then
    step "switchyard policy check --config (with $sy)"
    # The Secret's files (users_file, password_sha1_file) beside a copy of
    # each configuration, as the pod mounts them at /etc/switchyard/accounts/.
    for build in base overlays/example; do
        conf=deploy/kubernetes/$build/switchyard.toml
        acc="$tmp/accounts-$(echo "$build" | tr / -)"
        mkdir -p "$acc"
        for f in users.toml monitor-sha1; do
            if [ -f "deploy/kubernetes/$build/$f" ]; then
                install -m 0600 "deploy/kubernetes/$build/$f" "$acc/$f"
            fi
        done
        sed "s|/etc/switchyard/accounts/|$acc/|g" "$conf" > "$acc/switchyard.toml"
        if ! out=$("$sy" policy check "$wasm" --config "$acc/switchyard.toml" 2>&1); then
            echo "$out" >&2
            exit 1
        fi
        echo "  $conf: $(echo "$out" | grep '^selftest:' || echo loaded)"
    done
else
    step "switchyard policy check --config: skipped (no target/*/switchyard or $wasm)"
fi

# --- 2. Prometheus rules -------------------------------------------------
step "promtool check rules / test rules"
promtool check rules deploy/prometheus/switchyard-rules.yaml | sed 's/^/  /'
promtool test rules deploy/prometheus/switchyard-rules.test.yaml | sed 's/^/  /'

# --- 3. Metric names and the dashboard -----------------------------------
step "metric names (rules, dashboard) against host/src; dashboard"
python3 deploy/checks/metrics.py host/src deploy/prometheus/switchyard-rules.yaml \
    deploy/grafana/switchyard.json "$tmp/dashboard-exprs.yaml"
promtool check rules "$tmp/dashboard-exprs.yaml" | sed -e "s|$tmp/||" -e 's/^/  /'

# --- 4. Containerfile ----------------------------------------------------
step "deploy/Containerfile"
python3 deploy/checks/containerfile.py deploy/Containerfile

# --- 5. systemd unit -----------------------------------------------------
step "systemd-analyze verify examples/switchyard.service"
# A root with the unit, the system's own units, and stand-ins for the
# binaries it names (the unit names /usr/local/bin/switchyard, which need
# not be installed here).
root="$tmp/systemd-root"
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/local/bin" "$root/bin"
for d in /usr/lib/systemd/system /lib/systemd/system; do
    [ -d "$d" ] && { cp -r "$d" "$root/usr/lib/systemd/"; break; }
done
cp examples/switchyard.service "$root/etc/systemd/system/"
for exe in $(sed -n 's/^Exec[A-Za-z]*=[-@+!:]*\([^ ]*\).*/\1/p' examples/switchyard.service); do
    mkdir -p "$root$(dirname "$exe")"
    cp "$(type -P true)" "$root$exe"
done
verify_out=$(systemd-analyze verify --man=no --root="$root" switchyard.service 2>&1) || {
    echo "$verify_out" >&2
    exit 1
}
if [ -n "$verify_out" ]; then
    echo "$verify_out" | sed "s|$root||g" >&2
    echo "check: systemd-analyze verify warned about examples/switchyard.service" >&2
    exit 1
fi
echo "  no warnings"

echo "deploy/check.sh: all checks passed in $((SECONDS - started)) s"
