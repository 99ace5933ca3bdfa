"""Issue 5: interlocks, alarms and watchdog, shown on sequences, scenarios and recordings."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from controller.alarms import catalogue
from controller.cli import main
from controller.config import SITES_DIR, load_site
from controller.core import layout as L
from controller.core.interlocks import curve_fraction
from controller.core.step import step
from controller.limits_check import check_limits
from controller.params import build_params
from controller.points import INDEX, N_POINTS, Q_OK, Q_STALE
from controller.replay import iter_records
from tools.sim.runner import run_sim
from tools.sim.scenario import load_scenario

from images import image, run_images

CFG = load_site("inner-mongolia-mine")
PARAMS = build_params(CFG)
SITE_TEXT = (SITES_DIR / "inner-mongolia-mine.toml").read_text()


def test_alarm_catalogue_matches_kernel_bits():
    cat = catalogue()
    assert [cat[b].name for b in sorted(cat)] == list(L.ALARM_NAMES)
    assert all(a.text and a.check for a in cat.values())


# --- property tests over sequences ------------------------------------------------------------------
frames = st.fixed_dictionaries({
    "soc_pct": st.floats(0, 100), "bms_ccl_a": st.floats(-10, 400), "bms_dcl_a": st.floats(-10, 400),
    "battery_v": st.floats(0, 900), "cell_v_max": st.floats(2.5, 3.8), "cell_v_min": st.floats(2.5, 3.6),
    "cell_temp_max_c": st.floats(-30, 70), "cell_temp_min_c": st.floats(-30, 70),
    "grid_kw": st.floats(-100, 300), "pv_kw": st.floats(0, 200),
    "bms_charge_enable": st.sampled_from([0.0, 1.0, 1.0, 1.0]),
    "bms_discharge_enable": st.sampled_from([0.0, 1.0, 1.0, 1.0]),
    "op_mode": st.sampled_from([0.0, 0.0, 1.0, 2.0]), "op_battery_kw": st.floats(-1000, 1000),
    "stale": st.sampled_from([False, False, False, True]),
})


def limits_of(f):
    """The limits recomputed by hand from one frame: never more than the BMS, the profile and the SOC band."""
    v = f["battery_v"] if f["battery_v"] > 1.0 else PARAMS[L.P_NOMINAL_V]
    charge = min(PARAMS[L.P_CHARGE_MAX_KW], max(0.0, f["bms_ccl_a"]) * v / 1000)
    discharge = min(PARAMS[L.P_DISCHARGE_MAX_KW], max(0.0, f["bms_dcl_a"]) * v / 1000)
    # every curve is a fraction of the profile's maximum, and the lowest limit wins (docs/site-profile.md, [interlocks])
    charge = min(charge, PARAMS[L.P_CHARGE_MAX_KW] * curve_fraction(PARAMS, L.CURVE_CHARGE_VS_CELL_V_MAX,
                                                                    f["cell_v_max"]))
    discharge = min(discharge, PARAMS[L.P_DISCHARGE_MAX_KW] * curve_fraction(PARAMS, L.CURVE_DISCHARGE_VS_CELL_V_MIN,
                                                                             f["cell_v_min"]))
    if f["soc_pct"] >= PARAMS[L.P_SOC_MAX_PCT] or f["bms_charge_enable"] == 0.0:
        charge = 0.0
    if f["soc_pct"] <= PARAMS[L.P_SOC_MIN_PCT] or f["bms_discharge_enable"] == 0.0:
        discharge = 0.0
    for t in (f["cell_temp_max_c"], f["cell_temp_min_c"]):
        charge = min(charge, PARAMS[L.P_CHARGE_MAX_KW] * curve_fraction(PARAMS, L.CURVE_CHARGE_VS_TEMP_C, t))
        discharge = min(discharge, PARAMS[L.P_DISCHARGE_MAX_KW] * curve_fraction(PARAMS, L.CURVE_DISCHARGE_VS_TEMP_C, t))
    return charge, discharge


def check_sequence(params, seq):
    imgs = []
    for f in seq:
        value, quality = image(**{k: v for k, v in f.items() if k != "stale"})
        if f["stale"]:
            for name in ("soc_pct", "bms_ccl_a", "bms_dcl_a"):
                quality[INDEX[name]] = Q_STALE
        imgs.append((value, quality))
    out = run_images(params, imgs)
    ramp = params[L.P_RAMP_KW_PER_S]
    last = 0.0
    stale_run = 0
    for f, (state, cmd, events) in zip(seq, out):
        kw = cmd[L.C_BATTERY_KW]
        charge, discharge = limits_of(f)
        stale_run = stale_run + 1 if f["stale"] else 0
        if stale_run >= params[L.P_BMS_STALE_CYCLES]:
            assert kw == 0.0
        if not f["stale"]:
            assert -charge - 1e-9 <= kw <= discharge + 1e-9, (f, kw, charge, discharge)
        assert -cmd[L.C_CHARGE_LIMIT_KW] - 1e-9 <= kw <= cmd[L.C_DISCHARGE_LIMIT_KW] + 1e-9
        if kw * last > 0:                                  # same direction: increases follow the ramp
            assert abs(kw) <= abs(last) + ramp * 1.0 + 1e-9
        elif kw != 0.0:                                    # a new direction starts from 0
            assert abs(kw) <= ramp * 1.0 + 1e-9
        if state[L.S_CEILING_HOLD] > 0.5:                  # hold: no charging at all
            assert kw >= 0.0
        if state[L.S_FLOOR_HOLD] > 0.5:
            assert kw <= 0.0
        last = kw


@settings(max_examples=150, deadline=None)
@given(seq=st.lists(frames, min_size=1, max_size=40))
def test_no_sequence_of_images_commands_past_a_limit(seq):
    check_sequence(PARAMS, seq)


@settings(max_examples=100, deadline=None)
@given(seq=st.lists(frames, min_size=2, max_size=40))
def test_ramp_holds_with_a_slow_ramp(seq):
    params = PARAMS.copy()
    params[L.P_RAMP_KW_PER_S] = 5.0
    check_sequence(params, seq)


def test_regression_sign_flip_is_ramped_from_zero():
    """Shrunk by hypothesis: a manual -200 kW after +40 kW went straight to -200 with a slow ramp."""
    params = PARAMS.copy()
    params[L.P_RAMP_KW_PER_S] = 5.0
    base = dict(soc_pct=50.0, bms_ccl_a=300.0, bms_dcl_a=300.0, battery_v=768.0, cell_v_max=3.3,
                cell_v_min=3.28, cell_temp_max_c=25.0, cell_temp_min_c=25.0, grid_kw=40.0, pv_kw=0.0,
                bms_charge_enable=1.0, bms_discharge_enable=1.0, stale=False)
    seq = [dict(base, op_mode=1.0, op_battery_kw=40.0)] * 10 + [dict(base, op_mode=1.0, op_battery_kw=-200.0)] * 3
    check_sequence(params, seq)


def test_soc_ceiling_hold_has_hysteresis_and_minimum_time():
    hyst, hold_s = PARAMS[L.P_HOLD_HYSTERESIS_PCT], PARAMS[L.P_HOLD_MIN_S]
    smax = PARAMS[L.P_SOC_MAX_PCT]
    surplus = dict(grid_kw=-50.0, pv_kw=150.0)
    seq = [image(soc_pct=smax, **surplus)] + [image(soc_pct=smax - hyst / 2, **surplus)] * int(hold_s + 5) \
        + [image(soc_pct=smax - hyst - 0.1, **surplus)] * 40
    out = run_images(PARAMS, seq)
    charge = [-o[1][L.C_BATTERY_KW] for o in out]
    assert all(c <= 0.0 for c in charge[: int(hold_s) + 5])   # inside the hysteresis: still held
    assert max(charge[-5:]) > 0.0                             # released below it, after the recovery delay
    codes = [int(e[0]) for o in out for e in o[2]]
    assert L.EV_HOLD_ON in codes and L.EV_HOLD_OFF in codes


def test_force_charge_from_pv_not_from_grid_when_configured():
    params = PARAMS.copy()
    params[L.P_FORCE_CHARGE_FROM_GRID] = 0.0
    low = image(cell_v_min=2.90, soc_pct=12.0, grid_kw=60.0, pv_kw=5.0)
    out = run_images(params, [low] * 5)
    state, cmd, _ = out[-1]
    assert cmd[L.C_MODE] == L.MODE_FORCE_CHARGE and cmd[L.C_DISCHARGE_LIMIT_KW] == 0.0
    assert cmd[L.C_BATTERY_KW] <= 0.0
    assert cmd[L.C_GENSET_RUN] == 1.0                          # PV alone is short: the set helps
    assert cmd[L.C_ALARMS_ACTIVE] and int(cmd[L.C_ALARMS_ACTIVE]) >> L.A_FORCE_CHARGE & 1


def test_loop_that_cannot_keep_its_period_goes_safe():
    n = int(PARAMS[L.P_LOOP_SAFE_CYCLES])
    out = run_images(PARAMS, [image(loop_late_cycles=float(i)) for i in range(n + 2)])
    assert out[n - 1][1][L.C_MODE] != L.MODE_SAFE
    assert out[n][1][L.C_MODE] == L.MODE_SAFE and out[n][1][L.C_BATTERY_KW] == 0.0
    assert int(out[n][1][L.C_ALARMS_ACTIVE]) >> L.A_LOOP_OVERRUN & 1


def test_manual_setpoint_beyond_a_limit_is_clamped_and_says_why():
    # a 160 kW load (grid 150 + PV 10) takes the discharge: the BMS, not the export limit, bounds it
    out = run_images(PARAMS, [image(op_mode=1.0, op_battery_kw=900.0, bms_dcl_a=100.0, grid_kw=150.0)] * 3)
    _, cmd, _ = out[-1]
    assert cmd[L.C_BATTERY_KW] == pytest.approx(100.0 * 768.0 / 1000.0)
    assert cmd[L.C_MODE] == L.MODE_MANUAL
    events = out[0][2]
    limited = [e for e in events if int(e[0]) == L.EV_BATTERY_LIMITED]
    assert limited and L.reason_name(limited[0][1]) == "bms_current"


def test_latched_alarm_stays_until_acknowledged():
    high = image(cell_v_max=3.60)
    normal = image(cell_v_max=3.30)
    clear_s = int(PARAMS[L.P_ALARM_CLEAR_S])
    seq = [high] * 3 + [normal] * (clear_s + 5) + [image(cell_v_max=3.30, op_ack_bits=float(1 << L.A_CELL_OVERVOLTAGE))] + [normal] * 2
    out = run_images(PARAMS, seq)
    bit = 1 << L.A_CELL_OVERVOLTAGE
    assert int(out[0][1][L.C_ALARMS_ACTIVE]) & bit and int(out[0][1][L.C_ALARMS_UNACKED]) & bit
    assert int(out[3 + clear_s + 4][1][L.C_ALARMS_ACTIVE]) & bit          # cleared but latched
    assert not int(out[-1][1][L.C_ALARMS_ACTIVE]) & bit                   # acked: gone
    codes = [int(e[0]) for o in out for e in o[2]]
    assert L.EV_ALARM_ACKED in codes and L.EV_ALARM_CLEARED in codes


def test_genset_start_failure_latches_and_no_retry_until_ack():
    low = image(soc_pct=20.0, genset_running=0.0)
    timeout = int(PARAMS[L.P_GEN_START_TIMEOUT_S])
    seq = [low] * (timeout + 30) + [image(soc_pct=20.0, genset_running=0.0,
                                           op_ack_bits=float(1 << L.A_GENSET_START_FAILED))] + [low] * 3
    out = run_images(PARAMS, seq)
    runs = [o[1][L.C_GENSET_RUN] for o in out]
    assert runs[0] == 1.0
    assert runs[timeout + 5] == 0.0 and runs[timeout + 29] == 0.0       # no retries while latched
    codes = [int(e[0]) for o in out for e in o[2]]
    assert codes.count(L.EV_GENSET_START_FAILED) == 1
    assert int(out[timeout + 5][1][L.C_ALARMS_UNACKED]) >> L.A_GENSET_START_FAILED & 1
    assert runs[-1] == 1.0 or out[-1][0][L.S_GEN_OFF_S] < PARAMS[L.P_GEN_COOLDOWN_S]  # released after ack


def test_genset_max_starts_per_hour():
    params = PARAMS.copy()
    params[L.P_GEN_MIN_RUN_S] = 0.0
    params[L.P_GEN_COOLDOWN_S] = 0.0
    seq = []
    for _ in range(int(params[L.P_GEN_MAX_STARTS_PER_H]) + 2):
        seq += [image(soc_pct=20.0)] * 2 + [image(soc_pct=90.0, grid_kw=0.0)] * 2
    out = run_images(params, seq)
    codes = [int(e[0]) for o in out for e in o[2]]
    assert codes.count(L.EV_GENSET_START) == params[L.P_GEN_MAX_STARTS_PER_H]
    assert any(int(o[1][L.C_ALARMS_ACTIVE]) >> L.A_GENSET_MAX_STARTS & 1 for o in out)


# --- scenarios through the whole loop ---------------------------------------------------------------
def scenario_file(tmp_path, body, site_edits=()):
    site_text = SITE_TEXT
    for old, new in site_edits:
        assert old in site_text
        site_text = site_text.replace(old, new)
    (tmp_path / "site.toml").write_text(site_text)
    path = tmp_path / "scenario.toml"
    path.write_text(f'''
[scenario]
name = "test"
site = "{tmp_path / 'site.toml'}"
start_utc = "2026-04-10T03:00:00Z"
[pv]
kwp = 150.0
[load]
it_idle_kw = 50.0
it_nameplate_kw = 100.0
noise_kw = 0.5
{body}
''')
    return load_scenario(path)


def records(out_dir):
    return list(iter_records(out_dir / "recording"))


def test_bms_silent_safe_within_cycles_then_ramps_back(tmp_path):
    scn = scenario_file(tmp_path, '''
[init]
soc_pct = 70.0
[[events]]
kind = "bms_silent"
at_h = 0.1
duration_min = 3.0
''', site_edits=[("\n[pcs]", "ramp_kw_per_s = 2.0\n\n[pcs]")])
    out = tmp_path / "o"
    run_sim(scn, hours=0.3, out_dir=out)
    recs = records(out)
    soc = INDEX["soc_pct"]
    stale = [r.index for r in recs if r.image["quality"][soc] != Q_OK]
    first, last = stale[0], stale[-1]
    n = int(PARAMS[L.P_BMS_STALE_CYCLES])
    safe = [r.index for r in recs if r.commands[L.C_MODE] == L.MODE_SAFE]
    assert safe[0] <= first + n - 1                              # within the configured cycles
    assert all(recs[i].commands[L.C_BATTERY_KW] == 0.0 for i in range(safe[0], last + 1))
    after = [r.commands[L.C_BATTERY_KW] for r in recs[last + 1:]]
    delay = int(PARAMS[L.P_RECOVERY_DELAY_S])
    assert all(kw == 0.0 for kw in after[:delay - 1])
    steps = np.diff(np.abs(after[delay - 1:]))
    assert steps.max() <= 2.0 + 1e-9                              # back with the ramp
    assert max(np.abs(after)) > 10.0                              # and back to work


def test_cell_overvoltage_derates_along_the_curve(tmp_path):
    scn = scenario_file(tmp_path, '''
[init]
soc_pct = 60.0
[[events]]
kind = "cell_imbalance"
at_h = 0.05
duration_min = 40.0
ramp_min = 20.0
mv = 300.0
''')
    out = tmp_path / "o"
    run_sim(scn, hours=0.5, out_dir=out)
    cmax = PARAMS[L.P_CHARGE_MAX_KW]
    seen_curve = False
    for r in records(out):
        cell = r.image["value"][INDEX["cell_v_max"]]
        expected = cmax * curve_fraction(PARAMS, L.CURVE_CHARGE_VS_CELL_V_MAX, cell)
        assert r.commands[L.C_CHARGE_LIMIT_KW] <= expected + 1e-9
        assert -r.commands[L.C_BATTERY_KW] <= r.commands[L.C_CHARGE_LIMIT_KW] + 1e-9
        if L.reason_name(r.commands[L.C_CHARGE_REASON]) == "cell_voltage_curve" and 0 < expected < cmax:
            seen_curve = True
    assert seen_curve
    last = records(out)[-1].commands
    assert int(last[L.C_ALARMS_ACTIVE]) >> L.A_CELL_OVERVOLTAGE & 1     # 3.55 V crossed: latched


def test_low_soc_in_an_outage_starts_genset_and_serves_the_load(tmp_path):
    scn = scenario_file(tmp_path, '''
[init]
soc_pct = 28.0
[[events]]
kind = "grid_outage"
at_h = 0.1
duration_min = 120.0
''')
    scn["scenario"]["start_utc"] = "2026-04-10T13:00:00Z"   # night
    result = run_sim(scn, hours=2.5, out_dir=tmp_path / "o")
    assert result.kpis["genset_starts"] >= 1
    assert result.kpis["unserved_kwh"] == 0.0


def test_genset_start_failure_in_the_loop_then_ack(tmp_path):
    scn = scenario_file(tmp_path, '''
[init]
soc_pct = 25.0
[[events]]
kind = "genset_fail"
at_h = 0.0
duration_min = 10.0
''')
    acked = []

    def technician(loop, img, cmd, events, n):
        if int(cmd[L.C_ALARMS_UNACKED]) >> L.A_GENSET_START_FAILED & 1 and loop.cycle_no > 900 and not acked:
            loop.operator.acknowledge(1 << L.A_GENSET_START_FAILED)
            acked.append(loop.cycle_no)

    result = run_sim(scn, hours=0.5, out_dir=tmp_path / "o", hooks=[technician])
    ev = [json.loads(line) for line in (tmp_path / "o" / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"].split(":")[0].split(" ")[0] for e in ev]
    assert "genset_start_failed" in kinds and acked
    assert result.site.genset.running                      # after the ack (and the fault gone) it runs


@pytest.mark.parametrize("name", ["inner-mongolia-mine", "gansu-edge", "nordic-wind"])
def test_reference_scenarios_never_command_past_a_limit(name, tmp_path, request):
    hours = 48 if request.config.getoption("--run-slow") else 8
    run_sim(load_scenario(name), hours=hours, out_dir=tmp_path)
    report = check_limits(tmp_path / "recording")
    assert report.ok, report.violations[:3]
    assert main(["replay", str(tmp_path / "recording"), "--check-limits"]) == 0


def test_watchdog_ready_and_keepalive_over_a_real_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(120)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "run", "--site", "inner-mongolia-mine",
                           "--cycles", "3", "--speed", "20"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    messages = []
    sock.settimeout(0.5)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except socket.timeout:
        pass
    assert messages[0].startswith("READY=1")
    assert "WATCHDOG=1" in messages
    assert messages[-1] == "STOPPING=1"


def test_manual_setpoint_cannot_export_or_import_past_the_grid_limits():
    """Found by the TUI tests: a manual 250 kW discharge on a zero-export site exported 194 kW.
    The operator's setpoint is bounded by the grid connection like any other limit, and says so."""
    assert PARAMS[L.P_GRID_EXPORT_MAX_KW] == 0.0
    # load 50 kW from the meters (grid 40 + PV 10): at most 40 kW of discharge stays on site
    out = run_images(PARAMS, [image(op_mode=1.0, op_battery_kw=250.0, genset_running=0.0)] * 3)
    _, cmd, _ = out[-1]
    assert cmd[L.C_BATTERY_KW] == pytest.approx(40.0)
    assert L.reason_name(cmd[L.C_DISCHARGE_REASON]) == "grid_export_limit"
    limited = [e for e in out[0][2] if int(e[0]) == L.EV_BATTERY_LIMITED]
    assert limited and L.reason_name(limited[0][1]) == "grid_export_limit"
    # charging: import cap less margin, plus PV, minus the load
    cap_kw = PARAMS[L.P_GRID_IMPORT_MAX_KW] - PARAMS[L.P_GRID_MARGIN_KW]
    out = run_images(PARAMS, [image(op_mode=1.0, op_battery_kw=-250.0, genset_running=0.0)] * 3)
    _, cmd, _ = out[-1]
    assert cmd[L.C_BATTERY_KW] == pytest.approx(-(cap_kw + 10.0 - 50.0))
    assert L.reason_name(cmd[L.C_CHARGE_REASON]) == "grid_import_limit"
