"""A small file system that fills up: a 1 MB tmpfs (needs root; the test is skipped with the reason otherwise)."""
import os
import subprocess

import pytest


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}): needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs, leave):
    """Fill the file system but `leave` bytes; returns the filler's path (unlink it: space returns)."""
    filler = fs / "filler"
    st = os.statvfs(fs)
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
        except OSError:
            pass
    return filler
