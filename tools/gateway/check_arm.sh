#!/bin/bash
# `make check-arm`: install the aarch64 bundle offline into an arm64 Debian bookworm root and run it there.
#
# The root is made by debootstrap (minbase + python3 + systemd: what a gateway image has) and run with
# qemu-user-static through binfmt_misc, all from Debian's packages (`make deps-arm` installs them). The
# pristine root is cached in .cache/arm64-bookworm/base (gitignored; ~310 MB, ~3.5 min to make); every run
# installs into a fresh copy of it, so the install is always a first install on a clean gateway.
#
# Inside the copy, with no network (unshare --net): install.sh from the bundle (+ the simulator add-on),
# `edge-ems selftest`, a short `edge-ems sim` and `edge-ems run`, then install.sh again (must be harmless). Needs root.
#
#   tools/gateway/check_arm.sh [--keep-root]      ARM_MIRROR=... SIM_HOURS=... override the defaults
#   tools/gateway/check_arm.sh --print-mirror     the Debian mirror debootstrap would use, and nothing else
#                                                 (APT_ETC=DIR reads DIR instead of /etc/apt: for the tests)
set -euo pipefail

# The Debian mirror named by this machine's apt sources (the first one; empty if none). Both formats:
# one-line `deb [options] URI suite...` (sources.list, sources.list.d/*.list) and deb822 stanzas
# (sources.list.d/*.sources: `URIs:` may list several; `Enabled: no` and deb-src-only stanzas skipped).
# Files that do not exist are skipped, not an error: a bookworm image ships only debian.sources, and a
# sed over a missing file under pipefail used to end the script with exit 2. Security and non-Debian
# repositories (nodesource, vendor repos) are not a base mirror and are left out.
apt_mirror() {
    local etc="${1:-/etc/apt}" f
    local -a files=()
    for f in "$etc/sources.list" "$etc"/sources.list.d/*.list "$etc"/sources.list.d/*.sources; do
        [ -f "$f" ] && [ -r "$f" ] && files+=("$f")
    done
    [ "${#files[@]}" -gt 0 ] || return 0
    awk '
        function flush(   n, i, u) {
            if (uris != "" && enabled && types ~ /(^|[[:space:]])deb([[:space:]]|$)/) {
                n = split(uris, u, /[[:space:]]+/)
                for (i = 1; i <= n; i++) if (u[i] != "") print u[i]
            }
            uris = ""; types = ""; enabled = 1
        }
        FNR == 1 { if (deb822) flush(); deb822 = (FILENAME ~ /\.sources$/); uris = ""; types = ""; enabled = 1 }
        /^[[:space:]]*#/ { next }
        deb822 && /^[[:space:]]*$/ { flush(); next }
        deb822 && tolower($1) == "types:" { $1 = ""; types = $0; next }
        deb822 && tolower($1) == "uris:" { $1 = ""; uris = $0; next }
        deb822 && tolower($1) == "enabled:" { enabled = (tolower($2) != "no"); next }
        !deb822 && $1 == "deb" {
            i = 2
            if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            if (i <= NF) print $i
        }
        END { if (deb822) flush() }
    ' "${files[@]}" | sed 's:/*$::' | grep -E '^(https?|ftp|file):/.*/debian$' | grep -v security | head -n1 || true
}

pick_mirror() { echo "${ARM_MIRROR:-${MIRROR:-$(apt_mirror "${APT_ETC:-/etc/apt}")}}"; }
NO_MIRROR="no Debian mirror found in ${APT_ETC:-/etc/apt}/sources.list, sources.list.d/*.list or sources.list.d/*.sources \
(one-line deb entries or deb822 URIs:); name one: sudo ARM_MIRROR=http://deb.debian.org/debian tools/gateway/check_arm.sh \
(or your local Debian mirror)"
if [ "${1:-}" = --print-mirror ]; then
    m="$(pick_mirror)"
    [ -n "$m" ] || { echo "check-arm: $NO_MIRROR" >&2; exit 1; }
    echo "$m"
    exit 0
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="$REPO/.cache/arm64-bookworm"
SUITE=bookworm
INCLUDE=python3,systemd
STAMP="suite=$SUITE include=$INCLUDE variant=minbase"
PY="${PY:-$REPO/.venv/bin/python}"
SIM_HOURS="${SIM_HOURS:-0.25}"
LAB_S="${LAB_S:-60}"                      # cycles (1 s) of `edge-ems run` against the lab
KEEP_ROOT=no
[ "${1:-}" = --keep-root ] && KEEP_ROOT=yes

T0=$(date +%s)
phase_t=$T0
declare -a TIMES=()
phase() {                               # phase NAME: close the previous phase's timer, print a header
    local now; now=$(date +%s)
    [ -n "${PHASE:-}" ] && TIMES+=("$(printf '%-34s %4d s' "$PHASE" $((now - phase_t)))")
    PHASE="$1"; phase_t=$now
    [ -n "$1" ] && echo "=== check-arm: $1"
    return 0
}
die() { echo "check-arm: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, binfmt_misc)"
for c in debootstrap update-binfmts unshare chroot; do
    command -v "$c" >/dev/null || die "$c missing: make deps-arm (apt-get install debootstrap qemu-user-static binfmt-support)"
done

# --- binfmt: aarch64 binaries run through qemu (the F flag: no qemu binary needed inside the root) --------
phase "binfmt_misc: qemu-aarch64"
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 binfmt is not enabled"

# --- the pristine arm64 root (cached) ------------------------------------------------------------------------
phase "arm64 $SUITE root"
mkdir -p "$CACHE"
if [ "$(cat "$CACHE/base/.edge-ems-base" 2>/dev/null)" = "$STAMP" ]; then
    echo "cached: $CACHE/base"
else
    MIRROR="$(pick_mirror)"
    [ -n "$MIRROR" ] || die "$NO_MIRROR"
    echo "debootstrap from $MIRROR (a few minutes, once)"
    rm -rf "$CACHE/base" "$CACHE/base.tmp"
    debootstrap --arch=arm64 --variant=minbase --include="$INCLUDE" "$SUITE" "$CACHE/base.tmp" "$MIRROR" \
        > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log"; die "debootstrap failed"; }
    echo "$STAMP" > "$CACHE/base.tmp/.edge-ems-base"
    mv "$CACHE/base.tmp" "$CACHE/base"
fi

# --- the bundle (and the simulator add-on, for `edge-ems sim`) ---------------------------------------------
phase "build the aarch64 bundle"
DIST="$REPO/dist/gateway"
"$PY" "$REPO/tools/gateway/build_bundle.py" --out "$DIST" --sim-extra 2> "$CACHE/build_bundle.log" \
    || { grep -v '^WARNING: Location' "$CACHE/build_bundle.log" | tail -20; die "build_bundle.py failed"; }
BUNDLE="$(ls -d "$DIST"/edge-ems-*-aarch64 | head -n1)"
SIMDIR="$BUNDLE-sim"
[ -f "$BUNDLE/bundle.json" ] && [ -d "$SIMDIR" ] || die "no bundle in $DIST"

# --- a fresh gateway: a copy of the pristine root ------------------------------------------------------------
phase "fresh copy of the root"
ROOT="$CACHE/work"
cleanup() {
    for m in proc dev/pts; do mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m"; done
    [ "$KEEP_ROOT" = yes ] || rm -rf "$ROOT"
    return 0
}
trap cleanup EXIT
cleanup
cp -a "$CACHE/base" "$ROOT"
mkdir -p "$ROOT/media/usb"
cp -a "$BUNDLE" "$SIMDIR" "$ROOT/media/usb/"        # as from a USB stick
mount -t proc proc "$ROOT/proc"                     # numba reads /proc/cpuinfo
echo "edge-ems-check-arm" > "$ROOT/etc/hostname"

in_gateway() {                                      # a command on the gateway: aarch64, no network
    unshare --net chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb /bin/bash -c "$1"
}
B="/media/usb/$(basename "$BUNDLE")"

phase "install.sh (offline, first install)"
in_gateway "uname -m; python3 --version; $B/install.sh --console ttyAMA0 --sim $B-sim" | tee "$CACHE/install.log"

phase "edge-ems selftest"
set +e
in_gateway "edge-ems selftest" | tee "$CACHE/selftest-aarch64.txt"
SELFTEST_RC=${PIPESTATUS[0]}
set -e
[ "$SELFTEST_RC" = 0 ] || die "selftest on aarch64 failed (exit $SELFTEST_RC)"

phase "edge-ems sim ($SIM_HOURS h)"
in_gateway "edge-ems sim --scenario inner-mongolia-mine --hours $SIM_HOURS --out /tmp/sim && ls /tmp/sim" \
    | tee "$CACHE/sim-aarch64.txt"
grep -q '"' "$CACHE/sim-aarch64.txt" || die "edge-ems sim printed no KPIs"

phase "edge-ems run (the service's entry point, 300 cycles at 100x)"
in_gateway "edge-ems run --site /etc/edge-ems/site.toml --cycles 300 --speed 100 --out /tmp/run && ls /tmp/run" \
    | tee "$CACHE/run-aarch64.txt"
grep -q "recording" "$CACHE/run-aarch64.txt" || die "edge-ems run wrote no recording"

phase "edge-ems run against the lab (${LAB_S} s, the gateway's real ports)"
# The lab (tools/sim/lab.py) runs on the host as separate processes - RS-485 segments on socat ptys, the
# SunSpec PCS on Modbus TCP, Mosquitto - with its directory inside the root, so the gateway sees the
# profile's /tmp/edge-ems-lab/* ptys (host /dev/pts bound in) and 127.0.0.1:15020 / :18830 (this phase
# shares the host's loopback; the others run without a network).
LABDIR="$ROOT/tmp/edge-ems-lab"
mkdir -p "$ROOT/dev/pts" && mount --bind /dev/pts "$ROOT/dev/pts"
cp "$REPO/profiles/sites/lab.toml" "$ROOT/etc/edge-ems/lab.toml"
( cd "$REPO" && exec "$PY" -m tools.sim.lab --site profiles/sites/lab.toml --dir "$LABDIR" ) \
    > "$CACHE/lab.log" 2>&1 &
LAB_PID=$!
for _ in $(seq 1 120); do [ -f "$LABDIR/lab.json" ] && break; kill -0 "$LAB_PID" 2>/dev/null || break; sleep 1; done
[ -f "$LABDIR/lab.json" ] || { tail -20 "$CACHE/lab.log"; die "the lab did not come up"; }
# the lab makes its ptys group dialout, 0660, by the host's gid; pin the root's dialout gid in case they differ
DIALOUT_GID="$(chroot "$ROOT" getent group dialout | cut -d: -f3)"
for link in "$LABDIR"/rs485_* "$LABDIR"/can0; do
    case "$link" in *.srv) continue ;; esac
    dev="$(readlink -f "$link")"; chgrp "$DIALOUT_GID" "$dev" && chmod 0660 "$dev"
done
set +e
chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root EDGE_EMS_CACHE_DIR=/var/lib/edge-ems/cache \
    LANG=C.UTF-8 TERM=dumb /bin/bash -c "edge-ems run --site /etc/edge-ems/lab.toml --data-dir /tmp/labdata \
    --mqtt mqtt://127.0.0.1:18830 --socket none --cycles $LAB_S && edge-ems replay /tmp/labdata/recording --verify" \
    > "$CACHE/run-lab-aarch64.txt" 2>&1
LAB_RC=$?
set -e
kill "$LAB_PID" 2>/dev/null; wait "$LAB_PID" 2>/dev/null || true
tail -4 "$CACHE/run-lab-aarch64.txt"
[ "$LAB_RC" = 0 ] || die "edge-ems run against the lab failed on aarch64 (exit $LAB_RC)"
grep -q '"setpoint_kw"' "$LABDIR/applied.jsonl" || die "no PCS setpoint reached the lab"
grep -q '"simulator_modules_loaded": \[\]' "$CACHE/run-lab-aarch64.txt" || die "the controller loaded a simulator module"
"$PY" - "$CACHE/run-lab-aarch64.txt" <<'PYEOF' || die "a field device was not read every cycle it was due"
import json, sys
stats = json.loads(next(l for l in open(sys.argv[1]) if l.startswith('{"cycles"')))
bad = {n: d for n, d in stats["devices"].items() if "polls_due" in d and d["polls_ok"] < 0.9 * d["polls_due"]}
bad.update({a: v for a, v in stats.get("host_alarms", {}).items() if a.startswith("device_")})
print("devices:", {n: (d.get("polls_ok"), d.get("polls_due")) for n, d in stats["devices"].items()},
      "overruns", stats["overruns"], "p50/p99 ms", round(stats["p50_ms"], 1), round(stats["p99_ms"], 1))
print("not read / alarms:", bad) if bad else None
sys.exit(1 if bad else 0)
PYEOF
umount -l "$ROOT/dev/pts"

phase "install.sh again (must be harmless)"
in_gateway "$B/install.sh --console ttyAMA0 --sim $B-sim" | tee "$CACHE/install2.log"
grep -q "is already installed" "$CACHE/install2.log" || die "the second install.sh reinstalled"
in_gateway "test \"\$(ls /opt/edge-ems/versions | wc -l)\" = 1 && test ! -L /opt/edge-ems/previous" \
    || die "the second install.sh left a second version or a rollback target"

phase "checks on the installed tree"
in_gateway 'set -e
    id edge-ems | grep -q dialout
    test -x /opt/edge-ems/current/venv/bin/edge-ems
    test -f /etc/edge-ems/site.toml
    test -L /etc/systemd/system/multi-user.target.wants/edge-ems.service
    test -f /etc/systemd/system/serial-getty@ttyAMA0.service.d/edge-ems-console.conf
    test "$(stat -c %U:%a /var/lib/edge-ems/keys)" = edge-ems:700
    for d in spool ledger cache run; do test "$(stat -c %U /var/lib/edge-ems/$d)" = edge-ems; done
    ls /var/lib/edge-ems/cache/*/*/*.nbi >/dev/null
    systemd-analyze verify --man=no /etc/systemd/system/edge-ems.service serial-getty@ttyAMA0.service
    echo "service user, profile, unit (systemd-analyze verify: clean), console drop-in, data dir, kernel cache in place"'
phase ""

TOTAL=$(( $(date +%s) - T0 ))
{
    echo "check-arm passed on $(date -u +%FT%TZ) ($(nproc) cores, $(uname -m) host, qemu-user):"
    printf '  %s\n' "${TIMES[@]}"
    printf '  %-34s %4d s\n' "total" "$TOTAL"
} | tee "$CACHE/last-run.txt"
