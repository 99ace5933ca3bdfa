"""The gateway's recording as rotating segments: each replays alone, consecutive ones chain bit for bit,
every start opens a new one, the directory stays bounded, and a full disk never raises into the cycle."""
import numpy as np
import pytest

from controller.cli import main
from controller.config import load_site
from controller.core import layout as L
from controller.core.step import step
from controller.limits_check import check_limits
from controller.params import build_params
from controller.points import INDEX, N_POINTS, new_image
from controller.replay import verify
from controller.segments import SegmentRecorder, list_segments, segment_start_s, verify_dir
from images import HEALTHY
from smallfs import fill, small_fs  # noqa: F401 (fixture)

PARAMS = build_params(load_site("inner-mongolia-mine"))
T0 = 1767225600.0 + 3600.0          # 2026-01-01T01:00:00Z


class Cabinet:
    """Drives step the way ScanLoop does and hands the recorder the state that went into step."""

    def __init__(self, t0=T0, seed=1, noise=False):
        self.t = t0
        self.state = L.new_state(t0 - 1.0)
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        self.image = new_image()
        self.cycle = 0

    def run(self, rec, n, dt=1.0, tamper=None):
        for _ in range(n):
            img = self.image
            value = np.zeros(N_POINTS)
            for name, v in HEALTHY.items():
                value[INDEX[name]] = v
            value[INDEX["grid_kw"]] = self.rng.uniform(-20, 60)
            value[INDEX["pv_kw"]] = self.rng.uniform(0, 120)
            if self.noise:                                   # incompressible: fills a disk quickly
                value[INDEX["it_kw"]] = self.rng.uniform(0, 100)
                value[INDEX["cooling_kw"]] = self.rng.uniform(0, 10)
            img["value"] = value
            img["quality"] = 0
            img["t_s"] = self.t
            img["cycle"] = self.cycle
            state_in = self.state
            if tamper is not None:
                state_in = tamper(self.cycle, state_in)
            self.state, cmd, events, k = step(PARAMS, self.state, self.t, img["value"].copy(), img["quality"].copy())
            rec.append(img, cmd, events, k, state_in)
            self.t += dt
            self.cycle += 1


def test_segments_rotate_replay_alone_and_chain_across_boundaries(tmp_path, capsys):
    d = tmp_path / "recording"
    cab = Cabinet()
    rec = SegmentRecorder(d, PARAMS, cab.state, {"site": "test"}, max_segment_bytes=8192, max_total_bytes=1 << 30)
    cab.run(rec, 600)
    rec.close()
    segs = list_segments(d)
    assert len(segs) >= 3 and rec.records == 600 and rec.dropped == 0
    for s in segs:                                        # each segment alone, from its own header's state0
        res = verify(s)
        assert res.ok and res.cycles > 0 and not res.torn, (s.name, res.message)
    res = verify(d)
    assert res.ok and res.cycles == 600, res.message
    assert f"{len(segs) - 1} boundary(ies) chained" in res.message and "1 boot(s)" in res.message
    assert main(["replay", str(d), "--verify", "--check-limits"]) == 0
    assert main(["replay", str(segs[1]), "--verify", "--check-limits"]) == 0
    assert check_limits(d).cycles == 600
    capsys.readouterr()


def test_a_state_carried_wrongly_across_a_boundary_is_caught(tmp_path):
    """A segment whose state0 is not the state the previous segment ended with replays alone (the slot
    changed does not move any command) but breaks the chain: only the boundary check can see it."""
    d = tmp_path / "recording"
    cab = Cabinet()
    rec = SegmentRecorder(d, PARAMS, cab.state, max_segment_bytes=8192, max_total_bytes=1 << 30)
    seen = {}

    def tamper(cycle, state):
        if rec._fd >= 0 and rec._size >= rec.max_segment_bytes and not seen:   # this record starts a segment
            seen["cycle"] = cycle
            bad = state.copy()
            bad[L.S_TRIPS] += 5.0
            return bad
        return state
    cab.run(rec, 300, tamper=tamper)
    rec.close()
    assert seen
    segs = list_segments(d)
    assert all(verify(s).ok for s in segs)
    res = verify_dir(d)
    assert not res.ok and "state0 differs from the state after the last record" in res.message, res.message
    assert f"slots [{L.S_TRIPS}]" in res.message


def test_every_start_opens_a_new_segment_and_never_truncates(tmp_path):
    d = tmp_path / "recording"
    cab = Cabinet()
    rec = SegmentRecorder(d, PARAMS, cab.state)
    cab.run(rec, 50)
    rec.close()
    first = list_segments(d)
    before = {p: p.read_bytes() for p in first}
    cab2 = Cabinet(t0=cab.t + 30.0, seed=2)              # the restarted controller: a fresh state
    rec2 = SegmentRecorder(d, PARAMS, cab2.state)
    cab2.run(rec2, 50)
    rec2.close()
    segs = list_segments(d)
    assert len(segs) == len(first) + 1 and all(p.read_bytes() == b for p, b in before.items())
    res = verify(d)
    assert res.ok and res.cycles == 100 and "2 boot(s)" in res.message, res.message


def test_utc_day_change_rotates(tmp_path):
    d = tmp_path / "recording"
    cab = Cabinet(t0=1767225600.0 - 30.0)                # 30 s before 2026-01-01T00:00:00Z
    rec = SegmentRecorder(d, PARAMS, cab.state)
    cab.run(rec, 60)
    rec.close()
    segs = list_segments(d)
    assert [segment_start_s(p) for p in segs] == [1767225600.0 - 30.0, 1767225600.0]
    assert verify(d).ok


def test_bounded_in_bytes_and_days(tmp_path):
    d = tmp_path / "recording"
    cab = Cabinet()
    rec = SegmentRecorder(d, PARAMS, cab.state, max_segment_bytes=4096, max_total_bytes=20000)
    cab.run(rec, 1500)
    rec.close()
    total = sum(p.stat().st_size for p in list_segments(d))
    assert rec.deleted > 0 and total <= 20000 + 4096 + 2048
    res = verify(d)                                      # what is left still verifies and chains
    assert res.ok, res.message
    # age: a day of 10-minute cycles with a 0.5-day bound keeps only the last half day or so
    d2 = tmp_path / "aged"
    cab = Cabinet(t0=1767225600.0)
    rec = SegmentRecorder(d2, PARAMS, cab.state, max_segment_bytes=2048, max_total_bytes=1 << 30, max_age_days=0.5)
    cab.run(rec, 3 * 144, dt=600.0)                      # three days
    rec.close()
    starts = [segment_start_s(p) for p in list_segments(d2)]
    assert rec.deleted > 0 and starts[1] >= cab.t - 600.0 - 0.5 * 86400.0
    assert verify(d2).ok


def test_disk_full_drops_and_counts_keeps_what_is_stored_and_resumes(small_fs):
    d = small_fs / "recording"
    d.mkdir()
    cab = Cabinet(noise=True)
    rec = SegmentRecorder(d, PARAMS, cab.state, retry_every=20, min_free_bytes=64 << 10)
    filler = fill(small_fs, 48 << 10)
    cab.run(rec, 1500)                                   # far more than 48 KB: the disk fills; never raises
    assert rec.degraded and rec.faults >= 1 and rec.dropped > 0 and "No space left" in rec.last_error
    stored = rec.records
    segs = list_segments(d)
    snapshot = {p: p.read_bytes() for p in segs}
    res = verify(d)                                      # what was written replays (the tail is torn)
    assert res.ok and res.cycles <= stored and res.cycles > 0, res.message
    cab.run(rec, 100)                                    # still full: nothing new, more dropped
    assert rec.degraded and rec.records == stored
    filler.unlink()                                      # space returns
    cab.run(rec, 100)
    assert not rec.degraded and rec.records > stored
    rec.close()
    assert all(p.read_bytes() == b for p, b in snapshot.items())       # nothing stored before was touched
    res = verify(d)
    assert res.ok and "1 gap(s)" in res.message and "dropped before it" in res.torn, (res.message, res.torn)
    assert main(["replay", str(d), "--check-limits"]) == 0
