#!/bin/bash
# Install edge-ems on a gateway from this bundle alone (no network, no compiler).
#
#   sudo ./install.sh [--console TTY|none] [--no-start] [--keep N]   install or upgrade
#   sudo ./install.sh --rollback [--no-start]                         back to the previous version
#   ./install.sh --status                                             what is installed
#   --root DIR     install into a root directory tree instead of / (images, tests)
#   --sim DIR      also install the simulator add-on (build_bundle.py --sim-extra: ...-aarch64-sim/), lab only
#   --no-compile   do not compile the numba kernels now (the first start does, slowly)
#
# Layout:
#   /opt/edge-ems/versions/<version>-<bundle hash>/venv    one self-contained venv per installed bundle
#   /opt/edge-ems/current  -> versions/...                 what runs; upgrade and rollback switch it atomically
#   /opt/edge-ems/previous -> versions/...                 what --rollback goes back to
#   /etc/edge-ems/site.toml                                the site profile (never overwritten; the bundle's
#                                                          default is written next to it as site.toml.dist)
#   /var/lib/edge-ems/{spool,ledger,keys,cache,run}        data, owned by the service user, kept across upgrades
#                                                          and rollbacks (cache: numba kernels, one dir per kernel
#                                                          source hash, so versions never load each other's code)
#   /etc/systemd/system/edge-ems.service                   the unit (runs /opt/edge-ems/current/venv/bin/edge-ems)
#   /etc/systemd/system/serial-getty@TTY.service.d/edge-ems-console.conf
#                                                          the console port shows the TUI; quitting it gives login
#   /usr/local/bin/edge-ems                                the command for technicians (service user, data-dir cache)
#
# Running it twice is harmless: an installed bundle is recognised by its manifest hash and not reinstalled;
# users, directories and files are only created when missing; the profile and the data dir are never replaced.
set -euo pipefail

ROOT=/
ACTION=install
CONSOLE=auto
START=auto
COMPILE=yes
SIM=""
CHANGED=no                             # did this run change what runs? (restart the service only then)
KEEP=3
SERVICE_USER=edge-ems
BUNDLE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "edge-ems: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="$2"; shift 2 ;;
        --console) CONSOLE="$2"; shift 2 ;;
        --no-start) START=no; shift ;;
        --no-compile) COMPILE=no; shift ;;
        --sim) [ -d "${2:-}" ] || die "--sim needs the simulator add-on directory"; SIM="$(cd "$2" && pwd)"; shift 2 ;;
        --keep) KEEP="$2"; shift 2 ;;
        --rollback) ACTION=rollback; shift ;;
        --status) ACTION=status; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
ROOT="${ROOT%/}"                       # "" for the real root; paths below are "$ROOT/opt/..."
OPT="$ROOT/opt/edge-ems"
ETC="$ROOT/etc/edge-ems"
DATA="$ROOT/var/lib/edge-ems"
UNITS="$ROOT/etc/systemd/system"

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

link_atomic() {                        # link_atomic TARGET LINK: replace LINK in one rename
    ln -sfn "$1" "$2.new.$$"
    mv -T "$2.new.$$" "$2"
}

install_if_changed() {                # install_if_changed MODE SRC DEST: rewrite DEST only when it differs
    if ! cmp -s "$2" "$3"; then install -m "$1" "$2" "$3"; CHANGED=yes; fi
}

restart_service() {
    if [ "$START" = no ]; then say "not restarting (--no-start)"; return; fi
    if [ "$CHANGED" = no ]; then say "nothing changed: edge-ems.service left running as it was"; return; fi
    if systemd_running; then
        systemctl daemon-reload
        systemctl restart edge-ems.service && say "edge-ems.service restarted" \
            || say "edge-ems.service failed to start: journalctl -u edge-ems -n 50"
    else
        say "systemd is not running here: the service starts at next boot"
    fi
}

status() {
    echo "current:  $(readlink "$OPT/current" 2>/dev/null || echo none)"
    echo "previous: $(readlink "$OPT/previous" 2>/dev/null || echo none)"
    echo "installed:"; ls -1 "$OPT/versions" 2>/dev/null | sed 's/^/  /' || true
}

rollback() {
    [ -L "$OPT/previous" ] || die "nothing to roll back to ($OPT/previous is missing)"
    local cur prev
    cur="$(readlink "$OPT/current")"; prev="$(readlink "$OPT/previous")"
    [ -f "$OPT/$prev/.complete" ] || die "previous version $prev is incomplete or was removed"
    link_atomic "$prev" "$OPT/current"
    link_atomic "$cur" "$OPT/previous"
    # the unit as that version shipped it (a newer one may start it with options it does not know)
    [ -f "$OPT/$prev/bundle/edge-ems.service" ] && install_if_changed 0644 "$OPT/$prev/bundle/edge-ems.service" \
        "$UNITS/edge-ems.service"
    echo "$(date -u +%FT%TZ) rollback $cur -> $prev" >> "$OPT/history.log"
    CHANGED=yes
    say "rolled back: current -> $prev (previous -> $cur); data in /var/lib/edge-ems untouched"
    restart_service
}

[ "$ACTION" = status ] && { status; exit 0; }
[ "$(id -u)" = 0 ] || die "run as root (sudo $0)"
[ "$ACTION" = rollback ] && { rollback; exit 0; }

# --- 1. the bundle is intact and fits this machine ----------------------------------------------------------
cd "$BUNDLE"
[ -f MANIFEST.sha256 ] && [ -f bundle.json ] || die "$BUNDLE is not an edge-ems bundle (no MANIFEST.sha256/bundle.json)"
if ! CHECK="$(sha256sum --quiet -c MANIFEST.sha256 2>&1)"; then
    echo "$CHECK" >&2
    die "the bundle is damaged (checksums above differ): copy it again; nothing was changed"
fi
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: the gateway image needs Python $(sed -n 's/.*"python": "\(.*\)".*/\1/p' bundle.json)"
read -r VERSION WANT_PY WANT_ARCH < <("$PYTHON" -c 'import json; b = json.load(open("bundle.json")); print(b["version"], b["python"], b["platform"])')
HAVE_PY="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$HAVE_PY" = "$WANT_PY" ] || die "this bundle is for Python $WANT_PY, $PYTHON is $HAVE_PY"
[ "$(uname -m)" = "$WANT_ARCH" ] || die "this bundle is for $WANT_ARCH, this machine is $(uname -m)"
if [ -n "$SIM" ]; then
    [ -f "$SIM/MANIFEST.sha256" ] && [ -f "$SIM/requirements.txt" ] || die "$SIM is not a simulator add-on (no MANIFEST.sha256/requirements.txt)"
    (cd "$SIM" && sha256sum --quiet -c MANIFEST.sha256 >&2) || die "the simulator add-on $SIM is damaged; nothing was changed"
fi
REQUIREMENT="$("$PYTHON" -c 'import json; print(json.load(open("bundle.json"))["requirement"])')"
ID="$VERSION-$(sha256sum MANIFEST.sha256 | cut -c1-8)"
VDIR="$OPT/versions/$ID"

# --- 2. the service user: serial ports (dialout); CAN is a socket (AF_CAN, allowed in the unit) -----------
if ! grep -q "^$SERVICE_USER:" "$ROOT/etc/group" 2>/dev/null; then
    groupadd --system ${ROOT:+--root "$ROOT"} "$SERVICE_USER"
fi
if ! grep -q "^$SERVICE_USER:" "$ROOT/etc/passwd" 2>/dev/null; then
    useradd --system ${ROOT:+--root "$ROOT"} --gid "$SERVICE_USER" --home-dir /var/lib/edge-ems --no-create-home \
        --shell /usr/sbin/nologin --comment "edge-ems controller" "$SERVICE_USER"
    say "created user $SERVICE_USER"
fi
for grp in dialout; do
    if grep -q "^$grp:" "$ROOT/etc/group" && ! grep -q "^$grp:.*[:,]$SERVICE_USER\(,\|$\)" "$ROOT/etc/group"; then
        usermod ${ROOT:+--root "$ROOT"} -a -G "$grp" "$SERVICE_USER"
    fi
done
SUID="$(awk -F: -v u="$SERVICE_USER" '$1 == u { print $3 }' "$ROOT/etc/passwd")"
SGID="$(awk -F: -v u="$SERVICE_USER" '$1 == u { print $3 }' "$ROOT/etc/group")"
[ -n "$SUID" ] && [ -n "$SGID" ] || die "could not create the service user $SERVICE_USER"

# --- 3. the version dir: a venv from the bundle's wheels only ---------------------------------------------
offline_pip() {                        # offline_pip PYTHON PIP REQUIREMENT...: only the bundle's wheels, no index
    local py="$1" pip="$2"; shift 2
    env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_REQUIRE_VIRTUALENV \
        PIP_CONFIG_FILE=/dev/null "$py" "$pip" install --no-index --find-links "$BUNDLE/wheels" \
        ${SIM:+--find-links "$SIM/wheels"} --no-cache-dir --disable-pip-version-check -q "$@"
}
mkdir -p "$OPT/versions"
if [ -f "$VDIR/.complete" ]; then
    say "$ID is already installed"
else
    rm -rf "$VDIR"                     # a half-finished earlier attempt
    mkdir -p "$VDIR"
    say "installing $ID into $VDIR (offline: pip --no-index, wheels from the bundle only)"
    "$PYTHON" -m venv --without-pip "$VDIR/venv"
    PIP_WHL="$(ls wheels/pip-*.whl | head -n1)"
    # The bundle's pip, run from its wheel; the machine's pip configuration is ignored (PIP_CONFIG_FILE).
    offline_pip "$VDIR/venv/bin/python" "$PIP_WHL/pip" pip "$REQUIREMENT"
    mkdir -p "$VDIR/bundle"
    cp install.sh bundle.json MANIFEST.sha256 edge-ems.service site.toml "$VDIR/bundle/"
    touch "$VDIR/.complete"
fi
if [ -n "$SIM" ] && [ ! -f "$VDIR/.sim" ]; then
    say "adding the simulator add-on (lab use: edge-ems sim, simulated sites)"
    # the add-on's own wheel (tools/: simulator, lab) and the sim extra's wheels; the gateway wheel has no tools/
    offline_pip "$VDIR/venv/bin/python" "$VDIR/venv/bin/pip" "${REQUIREMENT/edge-ems/edge-ems-sim}"
    touch "$VDIR/.sim"
    CHANGED=yes
fi

# --- 4. profile and data dir (never replaced) -------------------------------------------------------------
install -d -m 0755 "$ETC"
if [ -f "$ETC/site.toml" ]; then
    say "keeping $ETC/site.toml; the bundle's default is in site.toml.dist"
else
    install -m 0640 -o 0 -g "$SGID" site.toml "$ETC/site.toml"
    say "installed the default site profile $ETC/site.toml: edit it for this site"
fi
install -m 0644 site.toml "$ETC/site.toml.dist"
install -d -m 0750 -o "$SUID" -g "$SGID" "$DATA"
for d in spool ledger cache run; do install -d -m 0750 -o "$SUID" -g "$SGID" "$DATA/$d"; done
install -d -m 0700 -o "$SUID" -g "$SGID" "$DATA/keys"

# --- 5. commands: `edge-ems` for technicians, the console program ------------------------------------------
install -d -m 0755 "$ROOT/usr/local/bin" "$ROOT/usr/local/lib/edge-ems"
cat > "$ROOT/usr/local/bin/edge-ems.new" <<'EOF'
#!/bin/sh
# edge-ems for technicians (installed by install.sh): the installed version, the service's kernel cache,
# and as the service user when called by root, so files it makes in /var/lib/edge-ems stay the service's.
export EDGE_EMS_CACHE_DIR=/var/lib/edge-ems/cache
if [ "$(id -u)" = 0 ] && [ -z "$EDGE_EMS_AS_ROOT" ]; then
    exec setpriv --reuid=edge-ems --regid=edge-ems --init-groups --inh-caps=-all -- /opt/edge-ems/current/venv/bin/edge-ems "$@"
fi
exec /opt/edge-ems/current/venv/bin/edge-ems "$@"
EOF
chmod 0755 "$ROOT/usr/local/bin/edge-ems.new"; mv -f "$ROOT/usr/local/bin/edge-ems.new" "$ROOT/usr/local/bin/edge-ems"
cat > "$ROOT/usr/local/lib/edge-ems/console.new" <<'EOF'
#!/bin/sh
# The serial console's login program (agetty -n -l, see serial-getty@TTY.service.d/edge-ems-console.conf):
# the technician TUI as the service user (manual actions behind its PIN); quitting it gives a normal login.
printf '\r\nedge-ems on %s - starting the TUI (quit it for a login prompt)\r\n' "$(hostname)"
if /opt/edge-ems/current/venv/bin/edge-ems tui --help >/dev/null 2>&1; then
    setpriv --reuid=edge-ems --regid=edge-ems --init-groups --inh-caps=-all -- \
        env EDGE_EMS_CACHE_DIR=/var/lib/edge-ems/cache HOME=/var/lib/edge-ems \
        /opt/edge-ems/current/venv/bin/edge-ems tui
else
    printf 'this edge-ems version has no TUI; `edge-ems selftest` checks the gateway\r\n'
fi
exec /bin/login
EOF
chmod 0755 "$ROOT/usr/local/lib/edge-ems/console.new"; mv -f "$ROOT/usr/local/lib/edge-ems/console.new" "$ROOT/usr/local/lib/edge-ems/console"

# --- 6. systemd: the unit and the console port -------------------------------------------------------------
if [ "$CONSOLE" = auto ]; then         # the kernel's last serial console= (the one a technician plugs into)
    CONSOLE="$(tr ' ' '\n' < /proc/cmdline 2>/dev/null | sed -n 's/^console=\(tty[A-Za-z]*[0-9]*\).*/\1/p' \
               | grep -v '^tty[0-9]' | tail -n1 || true)"
    CONSOLE="${CONSOLE:-ttyS0}"
fi
install -d -m 0755 "$UNITS"
install_if_changed 0644 edge-ems.service "$UNITS/edge-ems.service"
if [ "$CONSOLE" != none ]; then
    install -d -m 0755 "$UNITS/serial-getty@$CONSOLE.service.d"
    cat > "$UNITS/serial-getty@$CONSOLE.service.d/edge-ems-console.conf.new" <<'EOF'
# edge-ems (install.sh): the console port opens the technician TUI (115200 8N1); quitting it gives login.
[Service]
ExecStart=
ExecStart=-/sbin/agetty -n -l /usr/local/lib/edge-ems/console --keep-baud 115200,57600,38400,9600 %I $TERM
EOF
    install_if_changed 0644 "$UNITS/serial-getty@$CONSOLE.service.d/edge-ems-console.conf.new" \
        "$UNITS/serial-getty@$CONSOLE.service.d/edge-ems-console.conf"
    rm -f "$UNITS/serial-getty@$CONSOLE.service.d/edge-ems-console.conf.new"
    say "console: serial-getty@$CONSOLE.service opens the TUI (drop-in edge-ems-console.conf)"
fi
if command -v systemctl >/dev/null 2>&1; then
    systemctl ${ROOT:+--root="$ROOT"} enable edge-ems.service >/dev/null 2>&1 || die "systemctl enable edge-ems failed"
    if [ "$CONSOLE" != none ]; then
        systemctl ${ROOT:+--root="$ROOT"} enable "serial-getty@$CONSOLE.service" >/dev/null 2>&1 || true
    fi
else                                   # an image without systemctl (yet): the links `systemctl enable` makes
    install -d "$UNITS/multi-user.target.wants"
    ln -sfn /etc/systemd/system/edge-ems.service "$UNITS/multi-user.target.wants/edge-ems.service"
    if [ "$CONSOLE" != none ]; then
        install -d "$UNITS/getty.target.wants"
        ln -sfn /lib/systemd/system/serial-getty@.service "$UNITS/getty.target.wants/serial-getty@$CONSOLE.service"
    fi
fi

# --- 7. compile the kernels for this CPU into the data dir's cache (the first start is then warm) ----------
if [ "$COMPILE" = yes ]; then
    say "numba kernels for this CPU into $DATA/cache (compiled on a first install: a while; loaded after)"
    EDGE_EMS_CACHE_DIR="$DATA/cache" "$VDIR/venv/bin/python" -m controller.warmup | sed 's/^/edge-ems: /'
    chown -R "$SUID:$SGID" "$DATA/cache"
else
    say "kernels not compiled (--no-compile): the first start compiles them into $DATA/cache"
fi

# --- 8. switch: current -> this version, previous -> what ran before ----------------------------------------
CUR="$(readlink "$OPT/current" 2>/dev/null || true)"
if [ "$CUR" = "versions/$ID" ]; then
    say "current is already $ID"
else
    [ -n "$CUR" ] && link_atomic "$CUR" "$OPT/previous"
    link_atomic "versions/$ID" "$OPT/current"
    echo "$(date -u +%FT%TZ) install ${CUR:-none} -> versions/$ID" >> "$OPT/history.log"
    CHANGED=yes
    say "current -> versions/$ID${CUR:+ (previous -> $CUR)}"
fi

# --- 9. keep the last $KEEP versions (never current or previous) -------------------------------------------
KEEP_CUR="$(readlink "$OPT/current")"; KEEP_PREV="$(readlink "$OPT/previous" 2>/dev/null || true)"
ls -1t "$OPT/versions" | tail -n +"$((KEEP + 1))" | while read -r old; do
    if [ "versions/$old" != "$KEEP_CUR" ] && [ "versions/$old" != "$KEEP_PREV" ]; then
        rm -rf "${OPT:?}/versions/$old"; say "removed old version $old"
    fi
done

restart_service
say "installed $ID. Check the gateway with: edge-ems selftest"
