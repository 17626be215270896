#!/usr/bin/env bash
# Boots a real systemd (Debian bookworm, systemd 252) in a container and
# installs examples/switchyard.service the way its header says, then checks
# the service from inside. Run from anywhere, as root:
#
#   bash deploy/systemd-boot-check.sh
#
#  1. Needs root, systemd-nspawn and debootstrap (Debian's systemd-container
#     and debootstrap, installed with apt-get when missing). Where no
#     container can boot (not root, no namespaces, systemd-nspawn refuses) it
#     prints one line `systemd-boot-check: SKIPPED: <reason>` and exits 0.
#  2. A minimal bookworm tree with systemd, made once with debootstrap and
#     cached in target/systemd-boot-check/bookworm (bookworm.stamp holds
#     what it was made from; a different stamp makes it again).
#  3. Each run boots an overlay of that tree (thrown away afterwards) with
#     /root/src holding the binary as target/release/switchyard (the newer
#     of target/release/switchyard and target/debug/switchyard), the default
#     policy target/wasm32-wasip2/release/default_policy.wasm, README.md
#     and examples/. A unit in the container (sy-boot-check.service) runs
#     the install lines taken from the unit's header as written (from the
#     first `#   ` command through `systemctl daemon-reload && systemctl
#     enable --now`), installs an admin token as the header says, sets
#     `token_file` and restarts the service, then checks:
#       - active/running, Type=notify, StatusText=serving, User=switchyard,
#         the process's uid and gid are switchyard's;
#       - /etc/switchyard 0750, switchyard.toml and admin.token 0640,
#         all root:switchyard, and no "Permission denied" in its journal;
#       - a client connection to the MySQL listener gets a greeting whose
#         protocol version is 10;
#       - /metrics answers 401 without the token and 200 with it;
#       - `systemctl reload` gives switchyard_reloads_total{result="ok"} 1;
#       - it is still running, same pid, no restart, 2 s past WatchdogSec;
#       - `systemctl stop` ends with Result=success and exit status 0.
#  4. --private-network: the container has its own loopback only (the
#     example's backends, 127.0.0.1:13306-13308, are closed there: the point
#     is that the service starts and serves its own ports).
#  5. The container is powered off and the overlay removed on exit, whatever
#     happens. Failures print the failed checks and the journal lines.
#
# UNIT=path checks another unit file (its own header's install lines), e.g.
# the earlier DynamicUser unit, which must fail:
#
#   UNIT=<(git show c445b68:examples/switchyard.service) bash deploy/systemd-boot-check.sh
#
# SYSTEMD_BOOT_CHECK_MIRROR overrides the Debian mirror for debootstrap;
# SYSTEMD_BOOT_CHECK_TIMEOUT the seconds the container gets (240).
# About 15 s with the tree cached, 50 s when it is made.
set -euo pipefail

started=$SECONDS
me=systemd-boot-check
say() { printf '%s: %s\n' "$me" "$*"; }
skip() { say "SKIPPED: $*"; exit 0; }
die() { say "FAILED: $*" >&2; exit 1; }

# UNIT may be relative to the caller's directory, or a /dev/fd/N.
unit_src=${UNIT:-}
if [ -n "$unit_src" ]; then
    case $unit_src in /*) ;; *) unit_src=$PWD/$unit_src ;; esac
    [ -r "$unit_src" ] || die "UNIT=$UNIT: cannot read it"
    unit_text=$(cat "$unit_src")
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac
if [ -z "$unit_src" ]; then
    unit_src=examples/switchyard.service
    unit_text=$(cat "$unit_src")
fi

SUITE=bookworm
MIRROR=${SYSTEMD_BOOT_CHECK_MIRROR:-http://deb.debian.org/debian}
# procps has /bin/kill, which the unit's ExecReload runs: every Debian
# install has it (priority important), minbase does not. curl for /metrics.
INCLUDE=systemd,systemd-sysv,dbus,procps,curl
machine=sy-boot-check
boot_timeout=${SYSTEMD_BOOT_CHECK_TIMEOUT:-240} # seconds from the container's start to the checks' end

# --- can this machine boot a container? -----------------------------------
[ "$(id -u)" = 0 ] || skip "needs root (running as uid $(id -u))"
if command -v unshare >/dev/null 2>&1; then
    if ! err=$(unshare --mount --uts --ipc --net --pid --fork true 2>&1); then
        skip "no namespaces: unshare: ${err##*: }"
    fi
fi
missing=()
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || skip "no systemd-nspawn/debootstrap and no apt-get to install ${missing[*]}"
    say "installing ${missing[*]} (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# --- what goes in -----------------------------------------------------------
bin=$target/debug/switchyard
if [ -x "$target/release/switchyard" ] && { [ ! -e "$bin" ] || [ "$target/release/switchyard" -nt "$bin" ]; }; then
    bin=$target/release/switchyard
fi
[ -x "$bin" ] || die "no $target/{release,debug}/switchyard: cargo build -p switchyard"
policy=$target/wasm32-wasip2/release/default_policy.wasm
[ -f "$policy" ] || die "no $policy: cargo build --release --target wasm32-wasip2 -p default-policy"

# The install lines: from the header's first `#   <command>` line through
# the one with `systemctl daemon-reload`; every line between is `#   ...`.
install_lines=$(awk '
    !on && /^#   [a-z]/ { on = 1 }
    on {
        if ($0 !~ /^#   /) { broken = 1; exit }
        sub(/^#/, ""); print
        if ($0 ~ /systemctl daemon-reload/) { done = 1; exit }
    }
    END { if (broken || !done) exit 1 }' <<<"$unit_text") \
    || die "$unit_src: no install lines in its header (indented '#   ' commands ending with 'systemctl daemon-reload ...')"
grep -q 'enable --now switchyard' <<<"$install_lines" \
    || die "$unit_src: its install lines do not 'systemctl enable --now switchyard'"
# The token line ("install ... TOKEN /etc/switchyard/admin.token").
token_line=$(grep -o 'install [^`]* TOKEN /etc/switchyard/admin\.token' <<<"$unit_text" | head -n 1 || true)
token_note=
if [ -z "$token_line" ]; then
    token_line='install -m 0640 TOKEN /etc/switchyard/admin.token'
    token_note="the header has no admin token line; using '$token_line'"
fi

# --- the cached tree --------------------------------------------------------
cache=$target/systemd-boot-check
tree=$cache/$SUITE
stamp=$cache/$SUITE.stamp
key="v1 suite=$SUITE variant=minbase include=$INCLUDE mirror=$MIRROR"
mkdir -p "$cache"
exec 9>"$cache/lock"
command -v flock >/dev/null 2>&1 && { flock -w 900 9 || die "another run holds $cache/lock"; }

run=
nspawn_pid=
cleanup() {
    local rc=$? i kid
    trap - EXIT INT TERM
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # nspawn passes SIGTERM to the container as an orderly poweroff.
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for i in $(seq 1 40); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$nspawn_pid" 2>/dev/null; then
            # Its child is the container's PID 1: killing it ends the
            # whole PID namespace.
            for kid in $(children "$nspawn_pid"); do kill -KILL "$kid" 2>/dev/null || true; done
            sleep 1
            kill -KILL "$nspawn_pid" 2>/dev/null || true
        fi
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    if [ -n "$run" ] && [ -d "$run" ]; then
        if mountpoint -q "$run/merged" 2>/dev/null; then
            umount "$run/merged" 2>/dev/null || umount -l "$run/merged" 2>/dev/null || true
        fi
        rm -rf "$run"
    fi
    rmdir "/run/systemd/nspawn/propagate/$machine" 2>/dev/null || true
    exit "$rc"
}
children() { # the pids whose parent is $1
    local s st rest ppid
    for s in /proc/[0-9]*/stat; do
        st=$(cat "$s" 2>/dev/null) || continue
        rest=${st##*) }
        read -r _ ppid _ <<<"$rest"
        if [ "$ppid" = "$1" ]; then s=${s#/proc/}; echo "${s%/stat}"; fi
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs left behind by a killed run (the lock says none is under way): its
# container, if still up, then its overlay.
for p in /proc/[0-9]*; do
    c=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    case $c in
    *systemd-nspawn*" -D $cache/run."*)
        say "stopping a container left by an earlier run (pid ${p#/proc/})"
        for kid in $(children "${p#/proc/}"); do kill -KILL "$kid" 2>/dev/null || true; done
        kill -KILL "${p#/proc/}" 2>/dev/null || true
        sleep 1
        ;;
    esac
done
for d in "$cache"/run.*; do
    [ -d "$d" ] || continue
    umount "$d/merged" 2>/dev/null || umount -l "$d/merged" 2>/dev/null || true
    rm -rf "$d"
done
run=$(mktemp -d "$cache/run.XXXXXX")

# Can systemd-nspawn start a container at all? A tree of /usr/bin/true.
probe=$run/probe
mkdir -p "$probe/usr/lib" "$probe/etc"
cp -L --parents /usr/bin/true $(ldd /usr/bin/true | grep -o '/[^ ]*') "$probe/"
cp -L /etc/os-release "$probe/usr/lib/os-release"
if ! err=$(systemd-nspawn --quiet --register=no --keep-unit --private-network \
    --link-journal=no --machine="$machine-probe" -D "$probe" /usr/bin/true 2>&1 </dev/null 9>&-); then
    skip "systemd-nspawn cannot start a container: $(grep -v '^\s*$' <<<"$err" | tail -n 1)"
fi
rm -rf "$probe"
rmdir "/run/systemd/nspawn/propagate/$machine-probe" 2>/dev/null || true

tree_note=cached
if [ ! -f "$tree/usr/lib/systemd/systemd" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
    tree_note=made
    say "making the $SUITE tree with debootstrap ($INCLUDE; a minute or two)"
    rm -rf "$tree" "$tree.new" "$stamp"
    if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$tree.new" "$MIRROR" \
        >"$cache/debootstrap.log" 2>&1; then
        tail -n 20 "$cache/debootstrap.log" >&2
        die "debootstrap failed (log: $cache/debootstrap.log)"
    fi
    # A journal kept on disk (read from here when the container never
    # reports), a machine id made at each boot, no package caches.
    mkdir -p "$tree.new/var/log/journal"
    : >"$tree.new/etc/machine-id"
    rm -f "$tree.new"/var/cache/apt/archives/*.deb "$tree.new"/var/cache/apt/*.bin
    rm -rf "$tree.new"/var/lib/apt/lists/*
    mv "$tree.new" "$tree"
    printf '%s\n' "$key" >"$stamp"
fi

# --- the per-run copy -------------------------------------------------------
mkdir -p "$run/upper" "$run/work" "$run/merged"
if ! mount -t overlay overlay -o "lowerdir=$tree,upperdir=$run/upper,workdir=$run/work" "$run/merged" 2>/dev/null; then
    cp -a "$tree/." "$run/merged/"
fi
m=$run/merged
src=$m/root/src
mkdir -p "$src/target/release" "$src/target/wasm32-wasip2/release" "$m/root/sy-boot-check"
install -m 0755 "$bin" "$src/target/release/switchyard"
cp "$policy" "$src/target/wasm32-wasip2/release/default_policy.wasm"
cp README.md "$src/README.md"
cp -r examples "$src/examples"
printf '%s\n' "$unit_text" >"$src/examples/switchyard.service"
printf 'cd /root/src\n%s\n' "$install_lines" >"$m/root/sy-boot-check/install.sh"
printf 'cd /root/src\n%s\n' "${token_line/TOKEN//root/src/admin.token}" >"$m/root/sy-boot-check/token.sh"

cat >"$m/etc/systemd/system/sy-boot-check.service" <<'EOF'
[Unit]
Description=systemd-boot-check: install switchyard.service and check it
After=basic.target
[Service]
Type=exec
ExecStart=/bin/bash /root/sy-boot-check/check.sh
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/sy-boot-check.service "$m/etc/systemd/system/multi-user.target.wants/sy-boot-check.service"

cat >"$m/root/sy-boot-check/check.sh" <<'EOF'
#!/bin/bash
# Inside the container: results go to /root/sy-boot-check/result, one line
# each ("ok ...", "FAIL ...", "info ..."), then "DONE pass" or "DONE fail".
set -uo pipefail
d=/root/sy-boot-check
res=$d/result
failed=0
ok() { echo "ok   $*" | tee -a "$res"; }
bad() { echo "FAIL $*" | tee -a "$res"; failed=1; }
info() { echo "info $*" | tee -a "$res"; }
finish() {
    if [ "$failed" = 1 ]; then
        {
            systemctl status switchyard --no-pager -l -n 0 2>&1 | head -n 12
            echo "-- journalctl -u switchyard:"
            journalctl -u switchyard --no-pager -o cat 2>&1 | tail -n 40
        } >"$d/journal"
        echo "DONE fail" >>"$res"
    else
        echo "DONE pass" >>"$res"
    fi
    systemctl poweroff --no-block
}
trap finish EXIT
prop() { systemctl show switchyard -p "$1" --value; }

state=$(timeout 120 systemctl is-system-running --wait 2>/dev/null)
info "boot: $(systemctl --version | head -n 1), system $state$(
    [ "$state" = running ] || printf ' (failed: %s)' "$(systemctl list-units --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' ')")"

# 1. The header's install lines, as written.
n=$(grep -c . $d/install.sh)
if bash -euxo pipefail $d/install.sh >$d/install.log 2>&1; then
    ok "the header's $((n - 1)) install lines ran (systemctl enable --now returned 0)"
else
    rc=$?
    bad "the header's install lines failed (exit $rc) at: $(grep '^+' $d/install.log | tail -n 1)"
    tail -n 8 $d/install.log | sed 's/^/     | /' | tee -a "$res"
    exit
fi
if [ "$(prop ActiveState)/$(prop SubState)" = active/running ]; then
    ok "enable --now started it: active/running"
else
    bad "after enable --now: $(prop ActiveState)/$(prop SubState) (Result=$(prop Result))"; exit
fi

# 2. The admin token as the header says; token_file on; restart.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >/root/src/admin.token
if ! bash -euxo pipefail $d/token.sh >>$d/install.log 2>&1; then
    bad "the token line failed: $(tail -n 1 $d/token.sh)"; exit
fi
sed -i 's|^# token_file = .*|token_file = "/etc/switchyard/admin.token"|' /etc/switchyard/switchyard.toml
grep -q '^token_file = "/etc/switchyard/admin.token"' /etc/switchyard/switchyard.toml \
    || { bad "could not set [admin] token_file in switchyard.toml"; exit; }
TOKEN=$(cat /root/src/admin.token)
if ! timeout 60 systemctl restart switchyard; then
    bad "systemctl restart switchyard (with the token) failed"; exit
fi

# 3. State, type, user.
s="$(prop ActiveState)/$(prop SubState)"
[ "$s" = active/running ] && ok "active/running after restart with the token" || { bad "after restart: $s"; exit; }
[ "$(prop Type)" = notify ] && ok "Type=notify" || bad "Type=$(prop Type)"
st=$(prop StatusText)
[ "$st" = serving ] && ok "StatusText=serving" || bad "StatusText=$st"
u=$(prop User)
[ "$u" = switchyard ] && ok "User=switchyard" || bad "User=$u"
pid=$(prop MainPID)
uid=$(id -u switchyard 2>/dev/null); gid=$(id -g switchyard 2>/dev/null)
puid=$(awk '/^Uid:/ {print $2 "/" $3 "/" $4 "/" $5}' /proc/"$pid"/status 2>/dev/null)
pgid=$(awk '/^Gid:/ {print $2 "/" $3 "/" $4 "/" $5}' /proc/"$pid"/status 2>/dev/null)
if [ -n "$uid" ] && [ "$puid" = "$uid/$uid/$uid/$uid" ] && [ "$pgid" = "$gid/$gid/$gid/$gid" ]; then
    ok "pid $pid runs as switchyard ($uid:$gid)"
else
    bad "pid $pid: Uid $puid Gid $pgid, switchyard is ${uid:-missing}:${gid:-missing}"
fi

# 4. Its files: root's, readable by its group.
for f in "/etc/switchyard 750" "/etc/switchyard/switchyard.toml 640" "/etc/switchyard/admin.token 640"; do
    set -- $f
    got=$(stat -c '%a %U:%G' "$1" 2>&1)
    [ "$got" = "$2 root:switchyard" ] && ok "$1 $got" || bad "$1 is '$got', not '$2 root:switchyard'"
done
if journalctl -u switchyard --no-pager -o cat | grep -i 'permission denied' >$d/denied; then
    bad "its journal has 'Permission denied': $(head -n 1 $d/denied)"
else
    ok "no 'Permission denied' in its journal (config and token read)"
fi

# 5. A client gets a greeting.
conf=/etc/switchyard/switchyard.toml
listen=$(sed -n 's/^listen = "\(.*\)".*/\1/p' $conf | head -n 1)
admin=$(sed -n '/^\[admin\]/,/^\[/ s/^listen = "\(.*\)".*/\1/p' $conf | head -n 1)
listen=${listen:-127.0.0.1:6033}; admin=${admin:-127.0.0.1:9033}
hdr=$(timeout 5 bash -c "exec 3<>/dev/tcp/${listen%:*}/${listen##*:}; head -c 5 <&3" | od -An -tx1 | tr -s ' ' | sed 's/^ //')
ver=$(awk '{print $5}' <<<"$hdr")
[ "$ver" = 0a ] && ok "greeting on $listen: protocol version 10 (header bytes $hdr)" \
    || bad "no greeting on $listen with protocol 10 (first bytes: '${hdr:-none}')"

# 6. /metrics needs the token.
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
c=$(code "http://$admin/metrics")
[ "$c" = 401 ] && ok "/metrics without the token: 401" || bad "/metrics without the token: $c"
c=$(code -H "Authorization: Bearer $TOKEN" "http://$admin/metrics")
[ "$c" = 200 ] && ok "/metrics with the token: 200" || bad "/metrics with the token: $c"
metrics() { curl -s --max-time 5 -H "Authorization: Bearer $TOKEN" "http://$admin/metrics"; }

# 7. Reload.
sed -i 's/^max_failures = \([0-9]*\)/max_failures = 1\1/' $conf
if timeout 30 systemctl reload switchyard; then
    got=
    for i in $(seq 1 20); do
        got=$(metrics | grep '^switchyard_reloads_total' | tr '\n' ' ')
        grep -q 'result="ok"} 1' <<<"$got" && break
        sleep 0.5
    done
    grep -q 'result="ok"} 1 ' <<<"$got" && grep -q 'result="failed"} 0' <<<"$got" \
        && ok "systemctl reload: ${got% }" || bad "after systemctl reload: ${got:-no metrics}"
    st=$(prop StatusText)
    [ "$st" = serving ] && ok "StatusText=serving after the reload" || bad "StatusText=$st after the reload"
else
    bad "systemctl reload switchyard failed"
fi

# 8. The watchdog: still the same process 2 s past WatchdogSec.
wd=$(prop WatchdogUSec)
if [[ $wd =~ ^([0-9]+)s$ ]] && [ "${BASH_REMATCH[1]}" -gt 0 ]; then
    sleep $((BASH_REMATCH[1] + 2))
    s="$(prop ActiveState)/$(prop SubState) pid $(prop MainPID) NRestarts=$(prop NRestarts)"
    [ "$s" = "active/running pid $pid NRestarts=0" ] \
        && ok "still $s $((BASH_REMATCH[1] + 2)) s later (WatchdogSec=$wd)" \
        || bad "$((BASH_REMATCH[1] + 2)) s later (WatchdogSec=$wd): $s, was pid $pid"
else
    bad "WatchdogUSec=$wd: no watchdog in whole seconds"
fi

# 9. Stop.
t0=$(date +%s.%N)
if timeout 60 systemctl stop switchyard; then
    t=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    s="$(prop ActiveState) Result=$(prop Result) ExecMainCode=$(prop ExecMainCode) ExecMainStatus=$(prop ExecMainStatus)"
    [ "$s" = "inactive Result=success ExecMainCode=1 ExecMainStatus=0" ] \
        && ok "systemctl stop ($t s): $s" || bad "after systemctl stop: $s"
else
    bad "systemctl stop switchyard failed"
fi
EOF

# --- boot -------------------------------------------------------------------
say "booting $SUITE ($tree_note tree) with ${UNIT:+UNIT=}$unit_src and ${bin#$root/}"
[ -z "$token_note" ] || say "note: $token_note"
systemd-nspawn --quiet --boot --keep-unit --register=no --private-network \
    --link-journal=no --console=read-only --machine="$machine" -D "$m" \
    </dev/null >"$run/boot.log" 2>&1 9>&- &
nspawn_pid=$!
res=$m/root/sy-boot-check/result
boot_started=$SECONDS
while kill -0 "$nspawn_pid" 2>/dev/null && [ $((SECONDS - boot_started)) -lt "$boot_timeout" ]; do
    grep -q '^DONE' "$res" 2>/dev/null && break
    sleep 1
done
# After DONE the container powers itself off (else cleanup stops it).
if grep -q '^DONE' "$res" 2>/dev/null; then
    for i in $(seq 1 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.5; done
fi
nspawn_rc=0
if ! kill -0 "$nspawn_pid" 2>/dev/null; then
    wait "$nspawn_pid" || nspawn_rc=$?
    nspawn_pid=
fi

elapsed=$((SECONDS - started))
if [ -f "$res" ]; then
    sed 's/^/  /' "$res" | grep -v '^  DONE'
fi
if grep -qx 'DONE pass' "$res" 2>/dev/null; then
    [ -z "$nspawn_pid" ] || say "note: the container did not power off by itself; stopped"
    say "PASS: $unit_src installed from its header and checked under systemd in $SUITE ($tree_note tree, binary ${bin#$root/}, policy, README.md, examples/) in ${elapsed} s"
    exit 0
fi
if grep -qx 'DONE fail' "$res" 2>/dev/null; then
    say "journal lines (from inside the container):"
    sed 's/^/  | /' "$m/root/sy-boot-check/journal" 2>/dev/null || true
    die "$unit_src: $(grep -c '^FAIL' "$res") check(s) failed (${elapsed} s)"
fi
# The checks never finished: the console and whatever journal there is.
say "console (tail):"
sed 's/\x1b\[[0-9;]*m//g' "$run/boot.log" | grep -v '^\s*$' | tail -n 15 | sed 's/^/  | /'
if command -v journalctl >/dev/null 2>&1 && [ -d "$m/var/log/journal" ]; then
    say "journal (tail):"
    journalctl -D "$m/var/log/journal" --no-pager -o short-monotonic 2>/dev/null | tail -n 40 | sed 's/^/  | /'
fi
if [ -n "$nspawn_pid" ]; then
    die "the checks did not finish within ${boot_timeout} s of booting"
fi
die "the container stopped (systemd-nspawn exit $nspawn_rc) before the checks finished"
