"""Safe start (issue 14): a boot before the BMS speaks holds the PCS at 0 kW and starts no genset.

The hand-wired field run of the issue started the genset at boot on a SOC of 0 % read from a stale
point; these drive the pure step with images as a gateway sees them in its first seconds.
"""
import numpy as np

from controller.config import load_site
from controller.core import layout as L
from controller.core.step import step
from controller.params import build_params
from controller.points import INDEX, Q_OK, new_image

PARAMS = build_params(load_site("inner-mongolia-mine"), "rule", t_ref_s=0.0)
BMS = {"soc_pct": 20.0, "bms_ccl_a": 100.0, "bms_dcl_a": 100.0, "cell_v_max": 3.30, "cell_v_min": 3.25}


def boot_image(**fresh):
    """An image with only the named points fresh (everything else never read: value 0, STALE)."""
    img = new_image()
    value, quality = img["value"].copy(), img["quality"].copy()
    for name, v in fresh.items():
        value[INDEX[name]] = v
        quality[INDEX[name]] = Q_OK
    return value, quality


def run(params, frames, state=None):
    state = L.new_state(0.0) if state is None else state
    out = []
    for k, (value, quality) in enumerate(frames, start=1):
        state, cmd, events, n = step(params, state, float(k), value, quality)
        out.append((cmd.copy(), [int(c) for c in events[:n, 0]]))
    return state, out


def test_bms_silent_at_boot_holds_pcs_and_genset_until_it_speaks():
    silent = [boot_image(grid_kw=45.0, pv_kw=0.0, battery_kw=0.0)] * 30     # grid meter up, BMS silent
    state, out = run(PARAMS, silent)
    assert all(cmd[L.C_BATTERY_KW] == 0.0 and cmd[L.C_GENSET_RUN] == 0.0 for cmd, _ in out)
    assert all(cmd[L.C_MODE] == L.MODE_SAFE for cmd, _ in out)
    assert L.EV_STARTUP_HOLD in out[0][1]
    assert L.EV_GENSET_START not in [e for _, ev in out for e in ev]
    # the BMS speaks: released in that very cycle, with its event; a low SOC may now start the set
    spoke = [boot_image(grid_kw=45.0, pv_kw=0.0, battery_kw=0.0, **BMS)] * 3
    _, out2 = run(PARAMS, spoke, state)
    assert L.EV_STARTUP_READY in out2[0][1]
    assert out2[0][0][L.C_GENSET_RUN] == 1.0            # 20 % is below start_soc_pct: a fresh reason now


def test_grid_state_unknown_holds_even_with_a_fresh_bms():
    _, out = run(PARAMS, [boot_image(**BMS)] * 5)
    assert all(cmd[L.C_BATTERY_KW] == 0.0 and cmd[L.C_GENSET_RUN] == 0.0 for cmd, _ in out)


def test_dark_site_black_start_starts_the_genset_with_its_reason():
    dark = [boot_image(grid_kw=0.0, grid_v=0.0, pv_kw=0.0)] * 3       # meter alive, feeder dead, no BMS
    _, out = run(PARAMS, dark)
    assert out[0][0][L.C_GENSET_RUN] == 1.0
    assert L.EV_BLACK_START in out[0][1] and L.EV_GENSET_START in out[0][1]
    assert out[0][0][L.C_BATTERY_KW] == 0.0


def test_stale_soc_after_boot_never_starts_the_genset():
    ready = [boot_image(grid_kw=30.0, pv_kw=0.0, battery_kw=0.0, **{**BMS, "soc_pct": 80.0})] * 2
    state, _ = run(PARAMS, ready)
    v, q = boot_image(grid_kw=30.0, pv_kw=0.0, battery_kw=0.0, **{**BMS, "soc_pct": 80.0})
    q[INDEX["soc_pct"]] = 1                                   # SOC stale, its last value kept
    v[INDEX["soc_pct"]] = 5.0                                  # a stale value that would start the set
    _, out = run(PARAMS, [(v, q)] * 2, state)
    assert all(cmd[L.C_GENSET_RUN] == 0.0 for cmd, _ in out)


def test_sim_start_is_not_held():
    """The simulator's devices answer in the first cycle, so its runs (and their KPIs) are unchanged."""
    _, out = run(PARAMS, [boot_image(grid_kw=30.0, pv_kw=0.0, battery_kw=0.0, **{**BMS, "soc_pct": 80.0})])
    assert L.EV_STARTUP_HOLD not in out[0][1] and out[0][0][L.C_MODE] != L.MODE_SAFE
