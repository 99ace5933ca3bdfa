"""The pure step: deterministic, strategy-independent limits, stale BMS -> safe state."""
import numpy as np
from hypothesis import given, settings, strategies as st

from controller.config import load_site
from controller.core import layout as L
from controller.core.step import step
from controller.params import build_params
from controller.points import INDEX, Q_STALE
from images import image, run_images

PARAMS = build_params(load_site("inner-mongolia-mine"))


healthy_image = image


def run(params, images):
    return run_images(params, images)


def test_same_inputs_same_outputs_bit_for_bit():
    rng = np.random.default_rng(3)
    images = []
    for _ in range(200):
        value, quality = healthy_image(grid_kw=rng.uniform(-20, 60), pv_kw=rng.uniform(0, 120),
                                       soc_pct=rng.uniform(5, 99))
        images.append((value, quality))
    a = run(PARAMS, images)
    b = run(PARAMS, images)
    assert all(x[1].tobytes() == y[1].tobytes() and x[0].tobytes() == y[0].tobytes() for x, y in zip(a, b))


def test_rule_discharges_to_cover_load_and_none_does_nothing():
    value, quality = healthy_image(grid_kw=40.0, pv_kw=10.0, soc_pct=80.0)
    _, cmd, _ = run(PARAMS, [(value, quality)])[0]
    assert cmd[L.C_BATTERY_KW] > 30.0                       # self-consumption: grid towards 0
    none = PARAMS.copy()
    none[L.P_STRATEGY] = L.STRATEGY_NONE
    _, cmd, _ = run(none, [(value, quality)])[0]
    assert cmd[L.C_BATTERY_KW] == 0.0 and cmd[L.C_GENSET_RUN] == 0.0


def test_bms_silent_goes_safe_within_configured_cycles_and_recovers():
    n_stale = int(PARAMS[L.P_BMS_STALE_CYCLES])
    fresh = healthy_image(grid_kw=60.0, soc_pct=80.0)
    silent_v, silent_q = healthy_image(grid_kw=60.0, soc_pct=80.0)
    for name in ("soc_pct", "bms_ccl_a", "bms_dcl_a", "cell_v_max", "cell_v_min", "battery_v"):
        silent_q[INDEX[name]] = Q_STALE
    recovery = int(PARAMS[L.P_RECOVERY_DELAY_S])
    images = [fresh] * 5 + [(silent_v, silent_q)] * (n_stale + 3) + [fresh] * (recovery + 10)
    out = run(PARAMS, images)
    modes = [int(o[1][L.C_MODE]) for o in out]
    powers = [o[1][L.C_BATTERY_KW] for o in out]
    back = 5 + n_stale + 3                                   # first fresh image again
    assert powers[4] > 0.0
    assert modes[5 + n_stale - 1] == L.MODE_SAFE and powers[5 + n_stale - 1] == 0.0
    assert all(p == 0.0 for p in powers[5 + n_stale - 1: back])
    assert modes[back] == L.MODE_NORMAL
    assert all(p == 0.0 for p in powers[back: back + recovery - 1])   # slow recovery (dbus-serialbattery)
    assert powers[-1] > 0.0
    codes = [int(e[0]) for o in out for e in o[2]]
    assert L.EV_BMS_STALE in codes and L.EV_BMS_BACK in codes


def test_bms_current_limit_caps_discharge():
    value, quality = healthy_image(grid_kw=200.0, soc_pct=80.0, bms_dcl_a=50.0, battery_v=768.0)
    _, cmd, events = run(PARAMS, [(value, quality)])[0]
    assert abs(cmd[L.C_BATTERY_KW] - 50.0 * 768.0 / 1000.0) < 1e-9
    assert L.EV_BATTERY_LIMITED in events[:, 0]


def test_genset_min_run_time_holds_it_on():
    low = healthy_image(soc_pct=20.0)
    high = healthy_image(soc_pct=90.0, grid_kw=0.0)
    out = run(PARAMS, [low] + [high] * 10)
    assert out[0][1][L.C_GENSET_RUN] == 1.0
    assert all(o[1][L.C_GENSET_RUN] == 1.0 for o in out[1:])   # min_run_s is 1800 s


@settings(max_examples=300, deadline=None)
@given(soc=st.floats(0, 100), ccl=st.floats(-10, 500), dcl=st.floats(-10, 500), volts=st.floats(0, 900),
       grid=st.floats(-300, 300), pv=st.floats(0, 200), cmax=st.floats(2.5, 4.0), cmin=st.floats(2.0, 3.6),
       charge_en=st.sampled_from([0.0, 1.0]), discharge_en=st.sampled_from([0.0, 1.0]),
       stale=st.booleans())
def test_no_command_exceeds_a_limit(soc, ccl, dcl, volts, grid, pv, cmax, cmin, charge_en, discharge_en, stale):
    value, quality = healthy_image(soc_pct=soc, bms_ccl_a=ccl, bms_dcl_a=dcl, battery_v=volts, grid_kw=grid,
                                   pv_kw=pv, cell_v_max=cmax, cell_v_min=cmin, bms_charge_enable=charge_en,
                                   bms_discharge_enable=discharge_en)
    if stale:
        quality[INDEX["soc_pct"]] = Q_STALE
    out = run(PARAMS, [(value, quality)] * 4)
    v = volts if volts > 1.0 else PARAMS[L.P_NOMINAL_V]
    for _, cmd, _ in out:
        kw = cmd[L.C_BATTERY_KW]
        assert -PARAMS[L.P_CHARGE_MAX_KW] <= kw <= PARAMS[L.P_DISCHARGE_MAX_KW]
        assert kw <= max(0.0, dcl) * v / 1000.0 + 1e-9
        assert -kw <= max(0.0, ccl) * v / 1000.0 + 1e-9
        if soc >= PARAMS[L.P_SOC_MAX_PCT] or charge_en == 0.0 or cmax >= PARAMS[L.P_CELL_V_MAX]:
            assert kw >= 0.0
        if soc <= PARAMS[L.P_SOC_MIN_PCT] or discharge_en == 0.0 or cmin <= PARAMS[L.P_CELL_V_MIN]:
            assert kw <= 0.0
        assert abs(kw) <= cmd[L.C_CHARGE_LIMIT_KW if kw < 0 else L.C_DISCHARGE_LIMIT_KW] + 1e-9
    if stale:
        assert out[-1][1][L.C_BATTERY_KW] == 0.0
