"""An independent check of a recording: did any recorded command exceed a limit?

Written apart from the numba interlocks on purpose (plain Python over the recorded images), so that a
bug in the kernel is not also a bug in its checker. Anyone can run it on a field recording:
`edge-ems replay REC --check-limits`. It also tallies which limit bounded the battery and checks that
every derating event carries a reason.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from controller.core import layout as L
from controller.points import INDEX, Q_OK
from controller.replay import iter_records, open_recording

TOL_KW = 1e-6


@dataclass
class LimitReport:
    cycles: int = 0
    violations: list = field(default_factory=list)     # (cycle, what)
    charge_reasons: Counter = field(default_factory=Counter)
    discharge_reasons: Counter = field(default_factory=Counter)
    limited_events: int = 0
    unexplained_events: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations and self.unexplained_events == 0


def _fresh(image, name) -> bool:
    return image["quality"][INDEX[name]] == Q_OK


def check_limits(path: str | Path, max_violations: int = 20) -> LimitReport:
    """`path`: a recording file, one segment, or a recording directory (every segment in order; the BMS
    stale count carries across a boundary of one boot and restarts with a new boot, as the kernel's does)."""
    from controller.segments import recording_files
    report = LimitReport()
    boot = None
    stale_run = 0
    for seg in recording_files(path):
        rec = open_recording(seg)
        seg_boot = (rec.header.get("segment") or {}).get("boot")
        if seg_boot is None or seg_boot != boot:
            stale_run = 0
        boot = seg_boot
        stale_run = _check_file(seg, rec, report, stale_run, max_violations)
        if len(report.violations) >= max_violations:
            break
    return report


def _check_file(path, rec, report: LimitReport, stale_run: int, max_violations: int) -> int:
    p = rec.params
    cmax = min(p[L.P_CHARGE_MAX_KW], p[L.P_PCS_RATED_KW])
    dmax = min(p[L.P_DISCHARGE_MAX_KW], p[L.P_PCS_RATED_KW])
    for r in iter_records(path, rec):
        img, cmd = r.image, r.commands
        v = img["value"]
        report.cycles += 1
        kw = cmd[L.C_BATTERY_KW]
        bms_fresh = all(_fresh(img, n) for n in ("soc_pct", "bms_ccl_a", "bms_dcl_a"))
        stale_run = 0 if bms_fresh else stale_run + 1
        charge, discharge = cmax, dmax
        why = []
        if stale_run >= p[L.P_BMS_STALE_CYCLES]:
            charge = discharge = 0.0
            why.append("BMS stale")
        volts = v[INDEX["battery_v"]] if _fresh(img, "battery_v") and v[INDEX["battery_v"]] > 1 else p[L.P_NOMINAL_V]
        if _fresh(img, "bms_ccl_a"):
            charge = min(charge, max(0.0, v[INDEX["bms_ccl_a"]]) * volts / 1000)
        if _fresh(img, "bms_dcl_a"):
            discharge = min(discharge, max(0.0, v[INDEX["bms_dcl_a"]]) * volts / 1000)
        soc = v[INDEX["soc_pct"]]
        if soc >= p[L.P_SOC_MAX_PCT] or (_fresh(img, "bms_charge_enable") and v[INDEX["bms_charge_enable"]] < 0.5):
            charge = 0.0
        if soc <= p[L.P_SOC_MIN_PCT] or (_fresh(img, "bms_discharge_enable") and v[INDEX["bms_discharge_enable"]] < 0.5):
            discharge = 0.0
        if _fresh(img, "bms_alarm_bits") and v[INDEX["bms_alarm_bits"]] != 0:
            charge = discharge = 0.0
        if _fresh(img, "cell_v_max") and v[INDEX["cell_v_max"]] >= p[L.P_CELL_V_MAX]:
            charge = 0.0
        if _fresh(img, "cell_v_min") and v[INDEX["cell_v_min"]] <= p[L.P_CELL_V_MIN]:
            discharge = 0.0
        cycle = int(img["cycle"])
        if kw > discharge + TOL_KW:
            report.violations.append((cycle, f"discharge {kw:.3f} kW above limit {discharge:.3f} kW {why}"))
        if -kw > charge + TOL_KW:
            report.violations.append((cycle, f"charge {-kw:.3f} kW above limit {charge:.3f} kW {why}"))
        if kw > cmd[L.C_DISCHARGE_LIMIT_KW] + TOL_KW or -kw > cmd[L.C_CHARGE_LIMIT_KW] + TOL_KW:
            report.violations.append((cycle, f"battery {kw:.3f} kW outside the limits the step itself reported"))
        if cmd[L.C_CHARGE_LIMIT_KW] < cmax - TOL_KW:
            report.charge_reasons[_reason(cmd[L.C_CHARGE_REASON])] += 1
        if cmd[L.C_DISCHARGE_LIMIT_KW] < dmax - TOL_KW:
            report.discharge_reasons[_reason(cmd[L.C_DISCHARGE_REASON])] += 1
        for code, value in r.events:
            # compared as floats: a record that passes its CRC may still hold NaN or inf (int() raised)
            if code == L.EV_BATTERY_LIMITED:
                report.limited_events += 1
                if not value > L.R_NONE:
                    report.unexplained_events += 1
        if len(report.violations) >= max_violations:
            break
    return stale_run


def _reason(code: float) -> str:
    """The limit reason's name; a code that is no reason (NaN, inf, a fraction) shows as its number."""
    return L.reason_name(code) if math.isfinite(code) and code == int(code) else repr(float(code))


def format_report(rep: LimitReport) -> str:
    lines = [f"{rep.cycles} cycles checked: {'no command exceeds a limit' if not rep.violations else f'{len(rep.violations)} VIOLATIONS'}"]
    for cycle, what in rep.violations:
        lines.append(f"  cycle {cycle}: {what}")
    lines.append(f"derating events: {rep.limited_events}, without a reason: {rep.unexplained_events}")
    if rep.charge_reasons:
        lines.append("charge limit below its maximum, cycles by reason: " + ", ".join(
            f"{k} {n}" for k, n in rep.charge_reasons.most_common()))
    if rep.discharge_reasons:
        lines.append("discharge limit below its maximum, cycles by reason: " + ", ".join(
            f"{k} {n}" for k, n in rep.discharge_reasons.most_common()))
    return "\n".join(lines)
