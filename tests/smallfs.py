"""A small file system that fills up: a tmpfs (needs root, as `make test` and CI run; without it the test
fails with the reason - a full-disk test that silently does not run proves nothing)."""
import contextlib
import os
import subprocess

import pytest


@contextlib.contextmanager
def tmpfs(mnt, size: str = "1m"):
    """Mount a tmpfs of `size` on the directory `mnt` (created) for the block; unmounted after."""
    mnt.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs on {mnt} ({r.stderr.decode().strip()}): the full-disk tests need root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_fs(tmp_path):
    with tmpfs(tmp_path / "fs") as mnt:
        yield mnt


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
