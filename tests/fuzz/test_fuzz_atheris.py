"""Coverage-guided runs of tests/fuzz/atheris_targets.py (atheris / libFuzzer) under `make test-long`.

Each target starts from valid seeds and runs a fixed number of inputs in a subprocess (libFuzzer owns
the process: it exits non-zero on the first input that raises past the target's contract and saves it
as crash-* in the test's tmp dir, which the failure message names). atheris is a test-time tool for
x86_64 Linux (docs/fuzzing.md); without it these tests fail saying so, they are not skipped.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fuzz_harness as H

SCRIPT = Path(__file__).with_name("atheris_targets.py")
# inputs per target under --run-slow (~10-30 s each on the 2-core dev machine)
RUNS = {"market": 200_000, "compute": 200_000, "commands": 40_000, "ledger": 60_000, "recording": 4_000,
        "plan": 8_000}


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(RUNS))
def test_atheris_target(target, tmp_path):
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.fail("atheris is not installed in this venv: `.venv/bin/pip install atheris` (docs/fuzzing.md)")
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(SCRIPT), target, "--write-seeds", str(corpus)], check=True, timeout=300)
    p = subprocess.run([sys.executable, str(SCRIPT), target, f"-runs={RUNS[target]}", "-max_total_time=300",
                        f"-artifact_prefix={tmp_path}/", str(corpus)],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    done = re.search(r"Done (\d+) runs", p.stderr)
    H.hit(f"atheris.{target}", int(done.group(1)) if done else 0)
    crashes = sorted(tmp_path.glob("crash-*"))
    assert p.returncode == 0 and not crashes, f"{target}: exit {p.returncode}, {crashes}:\n{p.stderr[-3000:]}"
