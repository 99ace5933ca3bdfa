"""tools/gateway/install.sh on this machine: into a temporary root (--root), from a real x86_64 bundle.

The aarch64 bundle is checked on an emulated gateway by `make check-arm` (slow, not in the default run);
the install script itself is architecture-neutral, so its promises are checked here, fast, with a bundle
built by the same build_bundle.py for this machine: running it twice changes nothing, an upgrade and a
rollback switch versions while the data dir (spool, ledger, keys) stays byte for byte, a damaged bundle is
refused before anything changes. Kernels are not compiled here (--no-compile): that is check-arm's part.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "tools" / "gateway" / "build_bundle.py"
ARCH = platform.machine()

def _build(out: Path, version: str, deps_from: Path | None = None) -> Path:
    cmd = [sys.executable, str(BUILD), "--arch", ARCH, "--no-tarball", "--out", str(out), "--version", version]
    if deps_from is not None:
        cmd += ["--deps-from", str(deps_from)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return out / f"edge-ems-{version}-{ARCH}"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    """Version 0.1.0 (dependencies fetched as manylinux wheels) and 0.1.1 (same wheels, new project wheel)."""
    out = tmp_path_factory.mktemp("bundles")
    old = _build(out, "0.1.0")
    new = _build(out, "0.1.1", deps_from=old)
    return old, new


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """An empty root with the account files of a fresh Debian (root, and the dialout group for serial ports)."""
    r = tmp_path_factory.mktemp("gateway-root")
    etc = r / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\ndialout:*::\n")
    if Path("/etc/login.defs").exists():
        shutil.copy("/etc/login.defs", etc / "login.defs")
    return r


def install(bundle: Path, root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run([str(bundle / "install.sh"), "--root", str(root), "--no-compile", "--no-start",
                           "--console", "ttyS0", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"install.sh {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: type, mode, owner, and content hash or link target (not times)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                what = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                what = ("dir",)
            snap[str(p.relative_to(root))] = (*what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return snap


def installed_version(root: Path) -> str:
    py = root / "opt/edge-ems/current/venv/bin/python"
    return subprocess.run([str(py), "-I", "-c", "import importlib.metadata as m; print(m.version('edge-ems'))"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_install_twice_is_harmless(bundles, root):
    old, _ = bundles
    first = install(old, root)
    assert "created user edge-ems" in first.stdout
    before = snapshot(root)
    second = install(old, root)
    assert "is already installed" in second.stdout and "current is already" in second.stdout
    assert "created user" not in second.stdout
    after = snapshot(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == [], f"the second run changed: {changed[:20]}"

    # what the first run made: user in dialout, profile, data dir, unit with watchdog and hardening, console
    passwd = (root / "etc/passwd").read_text()
    assert any(line.startswith("edge-ems:") and line.endswith(":/usr/sbin/nologin") for line in passwd.splitlines())
    dialout = next(line for line in (root / "etc/group").read_text().splitlines() if line.startswith("dialout:"))
    assert "edge-ems" in dialout.split(":")[3].split(",")
    assert (root / "etc/edge-ems/site.toml").read_bytes() == (old / "site.toml").read_bytes()
    keys = root / "var/lib/edge-ems/keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for d in ("spool", "ledger", "cache", "run"):
        assert (root / "var/lib/edge-ems" / d).is_dir()
    unit = (root / "etc/systemd/system/edge-ems.service").read_text()
    for option in ("Type=notify", "WatchdogSec=", "Restart=always", "NoNewPrivileges=yes", "ProtectSystem=strict",
                   "ReadWritePaths=/var/lib/edge-ems", "SupplementaryGroups=dialout", "AF_CAN",
                   "RuntimeDirectory=edge-ems"):
        assert option in unit, option
    assert (root / "etc/systemd/system/multi-user.target.wants/edge-ems.service").is_symlink()
    dropin = root / "etc/systemd/system/serial-getty@ttyS0.service.d/edge-ems-console.conf"
    assert "/usr/local/lib/edge-ems/console" in dropin.read_text()
    assert installed_version(root) == "0.1.0"
    ok = subprocess.run([str(root / "opt/edge-ems/current/venv/bin/edge-ems"), "check", "--site",
                         str(root / "etc/edge-ems/site.toml")], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


def test_upgrade_then_rollback_keeps_the_data(bundles, root):
    old, new = bundles
    if not (root / "opt/edge-ems/current").exists():
        install(old, root)
    data = root / "var/lib/edge-ems"
    (data / "spool" / "000001.jsonl").write_text('{"topic": "summary", "seq": 1}\n')
    (data / "ledger" / "2026-11.jsonl").write_text('{"interval": "2026-11-29T02:45Z", "kg_co2": 1.25}\n')
    (data / "keys" / "gateway.key").write_bytes(os.urandom(32))
    (root / "etc/edge-ems/site.toml").write_text((old / "site.toml").read_text() + "\n# edited on site\n")
    kept = {k: v for k, v in snapshot(root).items() if k.startswith(("var/lib/edge-ems/", "etc/edge-ems/site.toml"))}

    up = install(new, root)
    assert installed_version(root) == "0.1.1"
    opt = root / "opt/edge-ems"
    assert os.readlink(opt / "previous").startswith("versions/0.1.0-")
    assert "keeping" in up.stdout
    assert {k: v for k, v in snapshot(root).items() if k in kept} == kept

    down = subprocess.run([str(new / "install.sh"), "--root", str(root), "--rollback", "--no-start"],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert installed_version(root) == "0.1.0"
    assert os.readlink(opt / "previous").startswith("versions/0.1.1-")
    assert {k: v for k, v in snapshot(root).items() if k in kept} == kept
    assert "rollback" in (opt / "history.log").read_text()


def test_damaged_bundle_is_refused_before_any_change(bundles, root, tmp_path):
    _, new = bundles
    if not (root / "opt/edge-ems/current").exists():
        install(new, root)
    bad = tmp_path / new.name
    shutil.copytree(new, bad)
    whl = next((bad / "wheels").glob("numpy-*.whl"))
    with open(whl, "r+b") as f:
        f.seek(1000)
        f.write(b"\0\0\0\0")
    before = snapshot(root)
    proc = subprocess.run([str(bad / "install.sh"), "--root", str(root), "--no-start"], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=60)
    assert proc.returncode != 0
    assert "damaged" in proc.stderr and whl.name in proc.stderr
    assert snapshot(root) == before


def test_gateway_wheel_ships_no_simulator_and_the_lab_addon_does(bundles, tmp_path):
    """The gateway's wheel has no tools/ (simulator, lab, benches); the lab add-on's own wheel carries them and
    requires exactly this edge-ems and the sim extra."""
    import importlib.util
    import zipfile
    old, _new = bundles
    (gw,) = (old / "wheels").glob("edge_ems-*.whl")
    names = zipfile.ZipFile(gw).namelist()
    assert any(n.startswith("controller/runtime/") for n in names)
    assert not [n for n in names if n.startswith("tools/")]
    spec = importlib.util.spec_from_file_location("build_bundle", BUILD)
    bb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bb)
    sim = bb.build_sim_wheel(tmp_path, "0.1.0", ["pvlib>=0.10"])
    z = zipfile.ZipFile(sim)
    assert "tools/sim/lab.py" in z.namelist() and not [n for n in z.namelist() if n.startswith("controller/")]
    meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: edge-ems==0.1.0" in meta and "Requires-Dist: pvlib>=0.10" in meta
