"""The Debian mirror lookup of tools/gateway/check_arm.sh, run as the script itself runs it (bash,
`set -euo pipefail`) through `--print-mirror`, over fake /etc/apt trees: no debootstrap, no root.

Why: on a bookworm image whose only apt source is deb822 `sources.list.d/debian.sources` (no
sources.list, no *.list) the old lookup ran sed over the missing files under pipefail and ended
`make check-arm` with exit 2 before debootstrap started."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gateway" / "check_arm.sh"

BOOKWORM_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def _etc(tmp_path: Path, files: dict[str, str]) -> Path:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    return etc


def _lookup(etc: Path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("MIRROR", "ARM_MIRROR")}
    return subprocess.run(["bash", str(SCRIPT), "--print-mirror"], env={**clean, "APT_ETC": str(etc), **env},
                          capture_output=True, text=True, timeout=30)


def test_deb822_only_bookworm_image(tmp_path):
    """The failing machine: only debian.sources (security stanza first), no sources.list, no *.list."""
    etc = _etc(tmp_path, {"sources.list.d/debian.sources": BOOKWORM_SOURCES})
    r = _lookup(etc)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "http://deb.debian.org/debian"


def test_deb822_several_uris_disabled_and_src_only_stanzas(tmp_path):
    etc = _etc(tmp_path, {"sources.list.d/a-nodesource.sources":
                          "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n",
                          "sources.list.d/b.sources":
                          "Types: deb\nEnabled: no\nURIs: http://disabled.example/debian\nSuites: bookworm\n\n"
                          "Types: deb-src\nURIs: http://srconly.example/debian\nSuites: bookworm\n\n"
                          "types: deb deb-src\nuris: http://ftp.de.debian.org/debian/ http://ftp.fr.debian.org/debian\n"
                          "Suites: bookworm\n"})
    r = _lookup(etc)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "http://ftp.de.debian.org/debian"


def test_one_line_sources_list_with_options_and_no_list_d_files(tmp_path):
    etc = _etc(tmp_path, {"sources.list": "# a comment\ndeb-src http://src.example/debian bookworm main\n"
                                          "deb [ arch=amd64 signed-by=/k.gpg ] http://security.debian.org/debian-security bookworm-security main\n"
                                          "deb [arch=amd64] http://mirror.example.org/debian/ bookworm main\n"})
    r = _lookup(etc)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "http://mirror.example.org/debian"


def test_list_d_file_besides_deb822(tmp_path):
    etc = _etc(tmp_path, {"sources.list.d/local.list": "deb http://10.0.0.5/debian bookworm main\n",
                          "sources.list.d/google.list.disabled": "deb http://packages.cloud.google.com/debian x main\n"})
    r = _lookup(etc)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "http://10.0.0.5/debian"


def test_nothing_found_names_the_variable(tmp_path):
    """No source at all (and a missing sources.list.d): a clear message naming ARM_MIRROR, exit 1, not 2."""
    etc = tmp_path / "empty-apt"
    etc.mkdir()
    r = _lookup(etc)
    assert r.returncode == 1
    assert r.stdout == ""
    assert "ARM_MIRROR=" in r.stderr and str(etc) in r.stderr


def test_arm_mirror_overrides_the_sources(tmp_path):
    etc = _etc(tmp_path, {"sources.list.d/debian.sources": BOOKWORM_SOURCES})
    r = _lookup(etc, ARM_MIRROR="http://local.mirror/debian")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "http://local.mirror/debian"
