"""`edge-ems sim --out` on a disk that fills up: the run finishes, its figures are printed whole, the
files that could not be written are named with exit 1, and what the recording holds still replays."""
import json
import subprocess
import sys

from tests.smallfs import small_fs  # noqa: F401  (fixture)

EMS = [sys.executable, "-m", "controller.cli"]


def test_sim_on_a_full_out_dir_names_what_it_lost_and_keeps_what_it_wrote(small_fs):  # noqa: F811
    out = small_fs / "out"
    r = subprocess.run(EMS + ["sim", "--scenario", "inner-mongolia-mine", "--hours", "3", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.returncode == 1, r.stderr[-2000:]
    kpis = json.loads(r.stdout)
    assert kpis["cycles"] == 3 * 3600                # every cycle ran (the site period is 1 s)
    assert "recording_degraded" in kpis and kpis["recording_degraded"]["dropped"] > 0
    assert "not stored" in r.stderr and "recording" in r.stderr
    assert "part_faults" not in kpis                # nothing raised into the cycle: the recorder degraded
    v = subprocess.run(EMS + ["replay", "--verify", str(out / "recording")], capture_output=True, text=True,
                       timeout=300)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "torn" in v.stdout + v.stderr
