"""The kernel cache directory is named after every kernel source: numba keys a cached kernel on its own
file only, so a changed layout imported by an unchanged kernel file must land in a fresh directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import controller

SRC = Path(controller.__file__).resolve().parent


def _cache_dir(root: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(root), EDGE_EMS_CACHE_DIR=str(root / "cache"))
    out = subprocess.run([sys.executable, "-c", "import controller, os; print(os.environ['NUMBA_CACHE_DIR'])"],
                         capture_output=True, text=True, env=env, cwd=root, check=True)
    return out.stdout.strip()


def test_a_change_to_the_planners_layout_alone_moves_the_kernel_cache(tmp_path):
    shutil.copytree(SRC, tmp_path / "controller", ignore=shutil.ignore_patterns("__pycache__"))
    before = _cache_dir(tmp_path)
    assert before == _cache_dir(tmp_path)                       # unchanged sources: the same (warm) directory
    layout = tmp_path / "controller" / "core" / "mpc" / "layout.py"
    layout.write_text(layout.read_text() + "\nN_EXTRA = 1\n")   # dp.py and genset.py import it, unchanged
    after = _cache_dir(tmp_path)
    assert after != before and after.startswith(str(tmp_path / "cache"))
