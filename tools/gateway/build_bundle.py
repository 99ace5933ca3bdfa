"""Build the offline gateway bundle: everything an aarch64 gateway with Python 3.11 needs, no network, no compiler.

    python tools/gateway/build_bundle.py [--out dist/gateway] [--site inner-mongolia-mine] [--version V]
                                         [--sim-extra] [--deps-from BUNDLE_DIR] [--no-pin]
                                         [--arch aarch64|x86_64] [--no-tarball]

Writes OUT/edge-ems-<version>-aarch64/ and OUT/edge-ems-<version>-aarch64.tar.gz holding:

    install.sh          installs from this directory alone (tools/gateway/install.sh)
    edge-ems.service    the systemd unit
    site.toml           the default site profile (copied to /etc/edge-ems/site.toml unless one exists)
    bundle.json         name, version, python, platform, wheels, source commit
    wheels/*.whl        the project's wheel + every dependency, manylinux aarch64 wheels for CPython 3.11,
                        and pip itself (the venv is made with --without-pip: python3-venv is not needed)
    MANIFEST.sha256     `sha256sum -c` format, every file above; install.sh refuses a bundle that fails it

Dependencies are fetched with pip download's platform options (--only-binary=:all:), so a package with no
aarch64 wheel stops the build here rather than on the device. By default they are pinned to the versions
installed in the running environment (the ones the test suite ran against); --no-pin takes the newest.
--sim-extra also fetches the `sim` extra's wheels into OUT/edge-ems-<version>-aarch64-sim/ (a lab add-on
for `edge-ems sim` on the target; not part of the gateway bundle).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# Bookworm has glibc 2.36: any manylinux tag up to 2_28 installs there (pip also accepts the older ones).
MANYLINUX = ("manylinux_2_28", "manylinux_2_27", "manylinux_2_24", "manylinux_2_17", "manylinux2014")


def platforms(arch: str) -> list[str]:
    return [f"{tag}_{arch}" for tag in MANYLINUX]


PYTHON_VERSION = "3.11"
ARCH = "aarch64"
MANIFEST = "MANIFEST.sha256"
SOURCE_ITEMS = ("pyproject.toml", "README.md", "controller", "drivers", "tools", "profiles")


# --- manifest ---------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_lines(bundle: Path) -> list[str]:
    """`sha256  relative/path` for every regular file under bundle except the manifest, sorted by path."""
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST)
    return [f"{sha256_file(p)}  {p.relative_to(bundle).as_posix()}" for p in files]


def write_manifest(bundle: Path) -> Path:
    path = bundle / MANIFEST
    path.write_text("\n".join(manifest_lines(bundle)) + "\n")
    return path


# --- wheel tags -------------------------------------------------------------------------------------------
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<ver>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$")


def wheel_fits(filename: str, python_version: str = PYTHON_VERSION, arch: str = ARCH) -> tuple[bool, str]:
    """Whether a wheel installs on CPython `python_version` / glibc Linux `arch` without building anything."""
    m = _WHEEL.match(filename)
    if not m:
        return False, "not a wheel file name"
    major, minor = (int(x) for x in python_version.split("."))
    cp = f"cp{major}{minor}"
    pys, abis, plats = (set(m.group(k).split(".")) for k in ("py", "abi", "plat"))
    plat_ok = "any" in plats or any(p.startswith("manylinux") and p.endswith("_" + arch) for p in plats)
    if not plat_ok:
        return False, f"platform {m.group('plat')} is not manylinux {arch}"
    if "none" in abis and plats == {"any"}:
        py_ok = any(p in (f"py{major}", f"py{major}{minor}", cp) for p in pys)
    elif cp in abis or "none" in abis:
        py_ok = cp in pys or f"py{major}" in pys
    elif "abi3" in abis:                                # stable ABI: built for cp3X <= target
        py_ok = any(p.startswith(f"cp{major}") and int(p[3:] or 0) <= minor for p in pys)
    else:
        py_ok = False
    if not py_ok:
        return False, f"python/abi {m.group('py')}-{m.group('abi')} does not fit CPython {python_version}"
    return True, "ok"


# --- building ---------------------------------------------------------------------------------------------
def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def project_version(pyproject: Path) -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M)
    if not m:
        raise SystemExit(f"{pyproject}: no version")
    return m.group(1)


def _clean_copy(items, src: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc", "*.egg-info", "build")
    src.mkdir()
    for item in items:
        p = REPO / item
        (shutil.copytree(p, src / item, ignore=ignore) if p.is_dir() else shutil.copy2(p, src / item))


def gateway_pyproject(text: str, version: str | None) -> str:
    """The project file as the gateway's wheel declares it: without the cloud's command and extra (cloud/ is
    not copied, so a declared `edge-ems-cloud` would be a script that fails on import on every gateway)."""
    text = re.sub(r'^edge-ems-cloud\s*=.*\n', "", text, flags=re.M)
    text = re.sub(r'^cloud\s*=\s*\[\n(?:[^\n]*\n)*?\]\n', "", text, flags=re.M)
    if version:
        text = re.sub(r'^version\s*=\s*"[^"]+"', f'version = "{version}"', text, count=1, flags=re.M)
    return text


def build_project_wheel(dest: Path, version: str | None) -> Path:
    """The gateway's wheel, built from a clean copy of the sources (no stale build/ or __pycache__) without
    tools/: the gateway does not ship the simulator (the lab add-on's own wheel carries it)."""
    with tempfile.TemporaryDirectory(prefix="edge-ems-src-") as tmp:
        src = Path(tmp) / "src"
        _clean_copy([i for i in SOURCE_ITEMS if i != "tools"], src)
        pp = src / "pyproject.toml"
        pp.write_text(gateway_pyproject(pp.read_text(), version))
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dest, src])
    wheels = sorted(dest.glob("edge_ems-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one edge_ems wheel in {dest}, found {wheels}")
    return wheels[0]


SIM_PYPROJECT = """[build-system]
requires = ["setuptools>=68", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "edge-ems-sim"
version = "{version}"
description = "edge-ems lab add-on: the site simulator, the lab and the benches (never on a production gateway)"
requires-python = ">=3.10"
dependencies = {deps}

[tool.setuptools.packages.find]
include = ["tools*"]
"""


def build_sim_wheel(dest: Path, version: str, sim_reqs: list[str]) -> Path:
    """The lab add-on's wheel: tools/ (simulator, lab, benches) requiring this edge-ems and the sim extra."""
    with tempfile.TemporaryDirectory(prefix="edge-ems-sim-src-") as tmp:
        src = Path(tmp) / "src"
        _clean_copy(["tools"], src)
        deps = "[" + ", ".join(json.dumps(r) for r in [f"edge-ems=={version}", *sim_reqs]) + "]"
        (src / "pyproject.toml").write_text(SIM_PYPROJECT.format(version=version, deps=deps))
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dest, src])
    wheels = sorted(dest.glob("edge_ems_sim-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one edge_ems_sim wheel in {dest}, found {wheels}")
    return wheels[0]


def wheel_requirements(wheel: Path, extra: str | None = None) -> list[str]:
    """Requires-Dist of a wheel: the base requirements, or those of one extra."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    reqs = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        marker = req.split(";", 1)[1] if ";" in req else ""
        in_extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if (extra is None and not in_extra) or (extra is not None and in_extra and in_extra.group(1) == extra):
            reqs.append(re.sub(r"\s*;?\s*extra\s*==\s*['\"][^'\"]+['\"]", "", req).rstrip(" ;"))
    return reqs


def pins_from_environment() -> str:
    """`pip freeze` of the running environment (the versions the tests ran with), minus the project itself."""
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                         capture_output=True, text=True).stdout
    keep = [line for line in out.splitlines() if "==" in line and not line.lower().startswith("edge-ems")]
    return "\n".join(keep) + "\n"


def download_wheels(dest: Path, requirements: list[str], constraints: Path | None,
                    python_version: str = PYTHON_VERSION, arch: str = ARCH) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--implementation", "cp",
           "--python-version", python_version, "--abi", "cp" + python_version.replace(".", ""), "--abi", "abi3",
           "--abi", "none", "-d", dest]
    for plat in platforms(arch):
        cmd += ["--platform", plat]
    if constraints is not None:
        cmd += ["-c", constraints]
    _run(cmd + requirements)


def check_wheels(wheels_dir: Path, python_version: str = PYTHON_VERSION, arch: str = ARCH) -> None:
    bad = []
    for whl in sorted(wheels_dir.iterdir()):
        ok, why = wheel_fits(whl.name, python_version, arch)
        if not ok:
            bad.append(f"{whl.name}: {why}")
    if bad:
        raise SystemExit("wheels that would not install on the gateway:\n  " + "\n  ".join(bad))


def source_commit() -> str:
    """HEAD, with '+dirty' when tracked files differ from it (the wheel is built from the working tree)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_bundle_json(bundle: Path, version: str, site_name: str, requirement: str,
                      python_version: str = PYTHON_VERSION, arch: str = ARCH) -> dict:
    info = {
        "name": "edge-ems", "version": version, "python": python_version, "platform": arch,
        "requirement": requirement, "site_profile": site_name,
        "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source_commit": source_commit(),
        "wheels": sorted(p.name for p in (bundle / "wheels").glob("*.whl")),
    }
    (bundle / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def make_tarball(bundle: Path) -> Path:
    tar_path = bundle.with_name(bundle.name + ".tar.gz")

    def norm(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name, filter=norm)
    return tar_path


def resolve_site(site: str) -> Path:
    p = Path(site)
    if p.suffix == ".toml" and p.exists():
        return p
    p = REPO / "profiles" / "sites" / f"{site}.toml"
    if not p.exists():
        raise SystemExit(f"no site profile {site!r}")
    return p


def build(out: Path, site: str, version: str | None, sim_extra: bool, deps_from: Path | None, pin: bool,
          arch: str = ARCH, tarball: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    own_version = project_version(REPO / "pyproject.toml")
    version = version or own_version
    bundle = out / f"edge-ems-{version}-{arch}"
    if bundle.exists():
        shutil.rmtree(bundle)
    wheels = bundle / "wheels"
    wheels.mkdir(parents=True)
    project = build_project_wheel(wheels, version if version != own_version else None)
    with tempfile.TemporaryDirectory(prefix="edge-ems-pins-") as tmp:
        constraints = None
        if pin:
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text(pins_from_environment())
        if deps_from is not None:                  # same dependencies as an existing bundle (an upgrade test)
            for whl in (Path(deps_from) / "wheels").glob("*.whl"):
                if not whl.name.startswith("edge_ems-"):
                    shutil.copy2(whl, wheels / whl.name)
        else:
            download_wheels(wheels, [str(project), "pip"], constraints, arch=arch)
        check_wheels(wheels, arch=arch)
        if sim_extra:
            sim_dir = out / f"{bundle.name}-sim"
            if sim_dir.exists():
                shutil.rmtree(sim_dir)
            (sim_dir / "wheels").mkdir(parents=True)
            sim_reqs = wheel_requirements(project, "sim")
            download_wheels(sim_dir / "wheels", [str(project), *sim_reqs], constraints, arch=arch)
            for whl in (sim_dir / "wheels").glob("*.whl"):   # keep only what the gateway bundle lacks
                if (wheels / whl.name).exists():
                    whl.unlink()
            build_sim_wheel(sim_dir / "wheels", version, sim_reqs)
            check_wheels(sim_dir / "wheels", arch=arch)
            (sim_dir / "requirements.txt").write_text("\n".join([f"edge-ems-sim=={version}", *sim_reqs]) + "\n")
            write_manifest(sim_dir)
    site_path = resolve_site(site)
    shutil.copy2(site_path, bundle / "site.toml")
    for name in ("install.sh", "edge-ems.service"):
        shutil.copy2(HERE / name, bundle / name)
    os.chmod(bundle / "install.sh", 0o755)
    write_bundle_json(bundle, version, site_path.stem, f"edge-ems=={version}", arch=arch)
    write_manifest(bundle)
    tar = make_tarball(bundle).name if tarball else "no tarball"
    size_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6
    print(f"bundle {bundle} ({len(list(wheels.glob('*.whl')))} wheels, {size_mb:.1f} MB), {tar}")
    return bundle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "dist" / "gateway")
    ap.add_argument("--site", default="inner-mongolia-mine", help="default site profile: name or .toml file")
    ap.add_argument("--version", default=None, help="override the project's version (release builds, upgrade tests)")
    ap.add_argument("--sim-extra", action="store_true", help="also fetch the sim extra's aarch64 wheels (lab add-on)")
    ap.add_argument("--deps-from", type=Path, default=None, help="reuse the dependency wheels of this bundle dir")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="newest dependency versions instead of the running environment's")
    ap.add_argument("--arch", default=ARCH, help="target machine (uname -m); x86_64 builds a bundle to test the "
                                                 "install script on this machine")
    ap.add_argument("--no-tarball", dest="tarball", action="store_false", help="only the bundle directory")
    args = ap.parse_args(argv)
    build(args.out, args.site, args.version, args.sim_extra, args.deps_from, args.pin, args.arch, args.tarball)
    return 0


if __name__ == "__main__":
    sys.exit(main())
