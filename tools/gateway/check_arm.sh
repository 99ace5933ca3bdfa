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
#   tools/gateway/check_arm.sh [--keep-root]      MIRROR=... SIM_HOURS=... override the defaults
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="$REPO/.cache/arm64-bookworm"
SUITE=bookworm
INCLUDE=python3,systemd
STAMP="suite=$SUITE include=$INCLUDE variant=minbase"
PY="${PY:-$REPO/.venv/bin/python}"
SIM_HOURS="${SIM_HOURS:-0.25}"
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
    MIRROR="${MIRROR:-$(sed -n 's/^URIs: *\(\S*debian\)\/*$/\1/p; s/^deb \(\[[^]]*\] \)\?\(\S*debian\)\/* .*/\2/p' \
                        /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
                        2>/dev/null | grep -v security | head -n1)}"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
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
