"""The state file: the slots that must survive a restart do, the billed peak resets with the site's month,
timers never come back, a bad file is an alarm and ignored, a full disk is counted and harms nothing."""
import json

import numpy as np
import pytest

from controller.config import load_site
from controller.core import layout as L
from controller.core.step import step
from controller.params import build_params
from controller.points import INDEX, new_image
from controller.runtime.statefile import (MAX_BYTES, SLOTS, RunCounters, StateFile, persisted_slots,
                                          restore_slots)
from images import image
from smallfs import fill, small_fs  # noqa: F401 (fixture)

TZ = "Asia/Shanghai"                         # UTC+8
T_JAN = 1769868000.0                         # 2026-01-31T14:00:00Z = 22:00 local, still January
T_FEB_LOCAL = T_JAN + 3 * 3600.0             # 2026-01-31T17:00:00Z = 01:00 local on 1 February


def learned_state():
    """A state as after a day of running: MPC learnt, a billed peak, starts, trips, timers running."""
    params = build_params(load_site("inner-mongolia-mine"))
    params[L.P_STRATEGY] = L.STRATEGY_MPC
    state = L.new_state(T_JAN - 11.0)
    for k in range(10):
        value, quality = image(grid_kw=80.0 + k, it_kw=60.0)
        state, *_ = step(params, state, T_JAN - 10.0 + k, value, quality)
    assert state[L.S_MPC_READY] == 1.0
    state[L.S_PEAK_KW] = 123.5
    state[L.S_GEN_STARTS] = 17.0
    state[L.S_GEN_START_TIMES:L.S_GEN_START_TIMES + 2] = [T_JAN - 1800.0, T_JAN - 600.0]
    state[L.S_TRIPS] = 3.0
    state[L.S_LOADF:L.S_LOADF + 96] = np.linspace(40.0, 70.0, 96)       # a learnt load profile
    state[L.S_GEN_ON], state[L.S_GEN_ON_S], state[L.S_FLOOR_HOLD_S] = 1.0, 1234.0, 99.0
    state[L.S_BMS_STALE_N] = 4.0
    return params, state


def test_slots_survive_a_restart_and_timers_do_not(tmp_path):
    params, state = learned_state()
    sf = StateFile(tmp_path / "state.json")
    assert sf.save(persisted_slots(state, T_JAN, TZ, {"genset_run_h": 812.25}))
    saved = StateFile(tmp_path / "state.json").load()
    fresh = L.new_state(T_JAN + 60.0)
    notes = restore_slots(fresh, saved, T_JAN + 60.0, TZ)
    for name, (i, n) in SLOTS.items():
        if name in ("derate", "load_profile", "price_profile", "co2_profile"):
            continue                                       # their last-sample times are cleared on purpose
        assert fresh[i:i + n].tobytes() == state[i:i + n].tobytes(), name
    assert fresh[L.S_LOADF:L.S_LOADF + 96].tolist() == state[L.S_LOADF:L.S_LOADF + 96].tolist()
    assert fresh[L.S_GEN_ON] == 0.0 and fresh[L.S_GEN_ON_S] == 0.0 and fresh[L.S_FLOOR_HOLD_S] == 0.0
    assert fresh[L.S_BMS_STALE_N] == 0.0 and fresh[L.S_LAST_T_S] == T_JAN + 60.0
    assert any("billed peak 123.5 kW" in n for n in notes)
    assert RunCounters(saved).values["genset_run_h"] == 812.25
    # the restored learners are used, not re-initialised, by the next step (and it continues the peak)
    value, quality = image(grid_kw=80.0, it_kw=60.0)
    after, *_ = step(params, fresh, T_JAN + 60.0, value, quality)
    changed = np.flatnonzero(after[L.S_LOADF:L.S_LOADF + 96] != state[L.S_LOADF:L.S_LOADF + 96])
    assert len(changed) <= 1                   # at most the slot just closed learns; a re-init would zero all
    assert after[L.S_PEAK_KW] == 123.5 and after[L.S_GEN_STARTS] == 17.0


def test_billed_peak_resets_when_the_month_changes_in_the_site_time_zone(tmp_path):
    _, state = learned_state()
    sf = StateFile(tmp_path / "state.json")
    sf.save(persisted_slots(state, T_JAN, TZ))
    saved = sf.load()
    assert saved["month"] == "2026-01"
    utc = L.new_state(T_FEB_LOCAL)                       # in UTC it is still January: the zone decides
    restore_slots(utc, saved, T_FEB_LOCAL, None)
    assert utc[L.S_PEAK_KW] == 123.5
    fresh = L.new_state(T_FEB_LOCAL)
    notes = restore_slots(fresh, saved, T_FEB_LOCAL, TZ)  # 01:00 on 1 February in Shanghai
    assert fresh[L.S_PEAK_KW] == 0.0 and fresh[L.S_PEAK_WIN] == -1.0 and fresh[L.S_PEAK_WIN_KWH] == 0.0
    assert any("billed peak of 2026-01 dropped: the month is 2026-02" in n for n in notes)
    assert fresh[L.S_GEN_STARTS] == 17.0 and fresh[L.S_MPC_READY] == 1.0       # the rest still comes back
    same = L.new_state(T_JAN + 3600.0)
    restore_slots(same, saved, T_JAN + 3600.0, TZ)       # 23:00 local, still January: kept
    assert same[L.S_PEAK_KW] == 123.5


@pytest.mark.parametrize("content, why", [
    (b"{not json", "not JSON"),
    (json.dumps({"format": 2}).encode(), "format 2"),
    (json.dumps({"format": 1, "saved_t_s": 1.0, "month": "2026-01", "slots": {"peak_kw": ["a"]}}).encode(),
     "slots.peak_kw: expected a list of 1 finite numbers"),
    (json.dumps({"format": 1, "saved_t_s": 1.0, "month": "2026-01", "slots": {"load_profile": [1.0] * 5}}).encode(),
     "slots.load_profile: expected a list of 202 finite numbers"),
    (json.dumps({"format": 1, "saved_t_s": 1.0, "month": "2026-01", "slots": {"gen_on_s": [5.0]}}).encode(),
     "slots.gen_on_s: not a persisted slot"),
    (b" " * (MAX_BYTES + 1), "more than the 1048576"),
])
def test_a_bad_file_is_an_alarm_ignored_and_kept_aside(tmp_path, content, why):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    sf = StateFile(path)
    assert sf.load() is None
    assert why in sf.problem and "state.json" in sf.problem and "kept as state.json.bad" in sf.problem, sf.problem
    assert not path.exists() and (tmp_path / "state.json.bad").read_bytes() == content
    fresh = L.new_state(0.0)
    assert restore_slots(fresh, None, 0.0) == ["no saved state: fresh start"]


def test_saves_at_most_every_interval():
    t = [0.0]
    sf = StateFile("/nonexistent-dir/state.json", min_interval_s=60.0, clock=lambda: t[0])
    assert not sf.save({"format": 1}) and sf.faults == 1 and sf.degraded     # a failing path: counted
    t[0] = 30.0
    assert not sf.save({"format": 1}) and sf.faults == 1                       # throttled, not retried yet
    t[0] = 61.0
    assert not sf.save({"format": 1}) and sf.faults == 2


def test_run_counters_integrate_the_genset_running_point():
    c = RunCounters({"counters": {"genset_run_h": 10.0}})
    img = new_image()
    img["quality"][:] = 0
    img["value"][INDEX["genset_running"]] = 1.0
    for k in range(3601):
        img["t_s"] = 1000.0 + k
        c.update(img)
    img["t_s"] = 1000.0 + 3600.0 + 7200.0                # a 2 h gap (downtime): not counted
    c.update(img)
    assert c.values["genset_run_h"] == pytest.approx(11.0)


def test_state_file_on_a_full_disk_keeps_the_old_file(small_fs):
    _, state = learned_state()
    path = small_fs / "state.json"
    sf = StateFile(path, min_interval_s=0.0)
    assert sf.save(persisted_slots(state, T_JAN, TZ))
    good = path.read_bytes()
    filler = fill(small_fs, 0)
    state[L.S_PEAK_KW] = 200.0
    assert not sf.save(persisted_slots(state, T_JAN + 60.0, TZ))               # never raises
    assert sf.degraded and sf.faults == 1 and "No space left" in sf.last_error
    assert path.read_bytes() == good and not (small_fs / "state.json.tmp").exists()
    filler.unlink()
    assert sf.save(persisted_slots(state, T_JAN + 120.0, TZ)) and not sf.degraded
    assert StateFile(path).load()["slots"]["peak_kw"] == [200.0]
