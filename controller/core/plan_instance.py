"""Planning instances: load + validate the JSON contract of issue 4, and render a plan as JSON.

Why a strict loader: the solver kernel trusts its arrays (no NaN, right lengths, sane signs) so it can
stay branch-free and bounded; every malformed instance is stopped here with a message that names the
field and says what was expected, and `edge-ems plan` exits 2 on it.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

__all__ = [
    "InstanceError", "Battery", "Diesel", "Job", "PlanInstance", "PlanArrays",
    "load_instance", "instance_from_dict", "instance_to_dict", "result_to_json", "plan_main",
]


class InstanceError(ValueError):
    """A malformed planning instance; the message names the offending field."""


# Bounds on what `edge-ems plan` reads (issue 15): one week of 5-minute steps is the longest horizon the
# planner is built for (its solve time grows with H); the file bound follows from it (~12 arrays of H
# numbers of at most ~25 characters, plus slack); an integer literal of more digits than any float
# needs, or nesting deeper than the contract's 3 levels, is a crafted file, refused before it costs.
MAX_HORIZON = 2016
MAX_FILE_BYTES = 4 << 20
MAX_INT_DIGITS = 40
MAX_DEPTH = 8
# No quantity of a cabinet's plan comes near 1e9 (kW, kWh, currency per kWh, hours): a finite value beyond
# it is a crafted one whose products overflow in the solve (capacity 1e308 -> an infinite objective, and
# `plan` printed NaN, which is not JSON). The step length is at most a day.
MAX_MAGNITUDE = 1e9
MAX_DT_H = 24.0
# ... and the divisors have a floor for the same reason: an efficiency of 1e-320 made 1/eta infinite and
# the plan NaN. No real capacity, step or genset is below these.
MIN_DIVISOR = 1e-6
MIN_EFFICIENCY = 0.01


@dataclass(frozen=True)
class Battery:
    capacity_kwh: float
    soc0_pct: float
    soc_min_pct: float
    soc_max_pct: float
    charge_max_kw: float
    discharge_max_kw: float
    eta_charge: float
    eta_discharge: float
    wear_cost_per_kwh: float
    terminal_value_per_kwh: float
    reserve_pct: np.ndarray  # length H (a scalar in the JSON is broadcast)


@dataclass(frozen=True)
class Diesel:
    p_min_kw: float
    p_max_kw: float
    fuel_l_per_kwh: float
    fuel_l_per_h_on: float
    fuel_price_per_l: float
    co2_kg_per_l: float
    start_cost: float
    on0: bool


@dataclass(frozen=True)
class Job:
    """A deferrable job the planner places (issue 17): kw for duration_steps steps, all inside
    [earliest_step, deadline_step) of the horizon; contiguous unless splittable."""
    kw: float
    duration_steps: int
    earliest_step: int
    deadline_step: int        # exclusive: the job has ended by the start of this step
    splittable: bool = False


MAX_JOBS = 8                  # deferrable jobs per instance: the search is n x (rounds + 1) re-plans


@dataclass(frozen=True)
class PlanInstance:
    dt_h: float
    load_kw: np.ndarray
    pv_kw: np.ndarray
    grid_price: np.ndarray
    export_price: np.ndarray
    grid_co2_kg_per_kwh: np.ndarray
    grid_import_max_kw: np.ndarray
    export_max_kw: float
    carbon_price_per_kg: float
    peak_price_per_kw: float
    unserved_penalty_per_kwh: float
    soc_shortfall_penalty_per_kwh: float
    battery: Battery
    diesel: Optional[Diesel]
    jobs: tuple = ()          # Job, ... : deferrable jobs the planner places (the load is without them)

    @property
    def horizon(self) -> int:
        return int(self.load_kw.shape[0])

    def floor_pct(self) -> np.ndarray:
        """The soft SOC floor per step: max(soc_min, reserve_t)."""
        return np.maximum(self.battery.soc_min_pct, self.battery.reserve_pct)

    def soc_ceiling_pct(self) -> float:
        """The hard SOC ceiling. A battery that starts above soc_max may not be forced to shed energy it
        cannot (the site may have nowhere to put it), so the ceiling is relaxed to soc0 in that case:
        the plan can never raise SOC above where it started, and is never infeasible."""
        return max(self.battery.soc_max_pct, self.battery.soc0_pct)


_TOP_ARRAYS = ("load_kw", "pv_kw", "grid_price", "export_price", "grid_co2_kg_per_kwh", "grid_import_max_kw")
_TOP_SCALARS = ("dt_h", "export_max_kw", "carbon_price_per_kg", "peak_price_per_kw",
                "unserved_penalty_per_kwh", "soc_shortfall_penalty_per_kwh")
_BATTERY_KEYS = ("capacity_kwh", "soc0_pct", "soc_min_pct", "soc_max_pct", "charge_max_kw",
                 "discharge_max_kw", "eta_charge", "eta_discharge", "wear_cost_per_kwh",
                 "terminal_value_per_kwh", "reserve_pct")
_JOB_KEYS = ("kw", "duration_steps", "earliest_step", "deadline_step", "splittable")
_DIESEL_KEYS = ("p_min_kw", "p_max_kw", "fuel_l_per_kwh", "fuel_l_per_h_on", "fuel_price_per_l",
                "co2_kg_per_l", "start_cost", "on0")
# Arrays whose values must not be negative (prices and carbon intensities may be: negative prices exist).
_NONNEG_ARRAYS = ("load_kw", "pv_kw", "grid_import_max_kw")


@dataclass
class PlanArrays:
    """A plan as the contract's arrays, whoever solved it (our planner, HiGHS in the reference)."""
    grid_kw: np.ndarray
    export_kw: np.ndarray
    charge_kw: np.ndarray
    discharge_kw: np.ndarray
    diesel_kw: np.ndarray
    curtail_kw: np.ndarray
    unserved_kw: np.ndarray
    soc_pct: np.ndarray      # H+1 values, soc0 first
    diesel_on: np.ndarray    # bool per step
    objective: float         # the contract formula evaluated on this plan


def _number(value: Any, field: str) -> float:
    if isinstance(value, _HugeInt):
        raise InstanceError(f"{field}: expected a finite number, got an integer of {value.digits} digits")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InstanceError(f"{field}: expected a number, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError:
        raise InstanceError(f"{field}: expected a finite number, got an integer of {len(str(value))} digits") from None
    if not math.isfinite(out):
        raise InstanceError(f"{field}: expected a finite number, got {value!r}")
    if abs(out) > MAX_MAGNITUDE:
        raise InstanceError(f"{field}: expected a magnitude of at most {MAX_MAGNITUDE:g}, got {out!r}")
    return out


def _array(value: Any, field: str, horizon: Optional[int]) -> np.ndarray:
    if not isinstance(value, list):
        raise InstanceError(f"{field}: expected an array of numbers, got {type(value).__name__}")
    if len(value) > MAX_HORIZON:
        raise InstanceError(f"{field}: expected at most {MAX_HORIZON} values (one week of 5-minute steps), "
                            f"got {len(value)}")
    if horizon is not None and len(value) != horizon:
        raise InstanceError(f"{field}: expected {horizon} values (the length of load_kw), got {len(value)}")
    out = np.empty(len(value), dtype=np.float64)
    for i, item in enumerate(value):
        out[i] = _number(item, f"{field}[{i}]")
    return out


def _check_keys(obj: Any, keys: tuple, where: str) -> None:
    if not isinstance(obj, dict):
        raise InstanceError(f"{where}: expected an object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        field = missing[0] if where == "instance" else f"{where}.{missing[0]}"
        raise InstanceError(f"{field}: missing key (required)")
    unknown = sorted(k for k in obj if k not in keys)
    if unknown:
        raise InstanceError(f"{where}: unknown key {unknown[0]!r} (expected only {', '.join(keys)})")


def _require(cond: bool, field: str, expected: str, value: Any) -> None:
    if not cond:
        raise InstanceError(f"{field}: expected {expected}, got {value!r}")


def _battery(obj: Any, horizon: int) -> Battery:
    _check_keys(obj, _BATTERY_KEYS, "battery")
    vals = {k: _number(obj[k], f"battery.{k}") for k in _BATTERY_KEYS if k != "reserve_pct"}
    _require(vals["capacity_kwh"] >= MIN_DIVISOR, "battery.capacity_kwh", f"a capacity >= {MIN_DIVISOR:g}",
             vals["capacity_kwh"])
    for k in ("soc0_pct", "soc_min_pct", "soc_max_pct"):
        _require(0.0 <= vals[k] <= 100.0, f"battery.{k}", "a percentage in [0, 100]", vals[k])
    _require(vals["soc_min_pct"] <= vals["soc_max_pct"], "battery.soc_min_pct",
             f"soc_min_pct <= soc_max_pct ({vals['soc_max_pct']})", vals["soc_min_pct"])
    for k in ("charge_max_kw", "discharge_max_kw", "wear_cost_per_kwh"):
        _require(vals[k] >= 0, f"battery.{k}", "a value >= 0", vals[k])
    for k in ("eta_charge", "eta_discharge"):
        _require(MIN_EFFICIENCY <= vals[k] <= 1.0, f"battery.{k}", f"an efficiency in [{MIN_EFFICIENCY:g}, 1]", vals[k])
    raw = obj["reserve_pct"]
    if isinstance(raw, list):
        reserve = _array(raw, "battery.reserve_pct", horizon)
    else:
        reserve = np.full(horizon, _number(raw, "battery.reserve_pct"))
    for i, r in enumerate(reserve):
        _require(0.0 <= r <= 100.0, f"battery.reserve_pct[{i}]" if isinstance(raw, list)
                 else "battery.reserve_pct", "a percentage in [0, 100]", float(r))
    return Battery(reserve_pct=reserve, **vals)


def _diesel(obj: Any) -> Optional[Diesel]:
    if obj is None:
        return None
    _check_keys(obj, _DIESEL_KEYS, "diesel")
    on0 = obj["on0"]
    if not isinstance(on0, bool) and not (isinstance(on0, int) and on0 in (0, 1)):
        raise InstanceError(f"diesel.on0: expected true/false (or 0/1), got {on0!r}")
    vals = {k: _number(obj[k], f"diesel.{k}") for k in _DIESEL_KEYS if k != "on0"}
    for k in ("p_min_kw", "p_max_kw", "fuel_l_per_kwh", "fuel_l_per_h_on", "fuel_price_per_l",
              "co2_kg_per_l", "start_cost"):
        _require(vals[k] >= 0, f"diesel.{k}", "a value >= 0", vals[k])
    _require(vals["p_max_kw"] >= MIN_DIVISOR, "diesel.p_max_kw", f"a value >= {MIN_DIVISOR:g}", vals["p_max_kw"])
    _require(vals["p_min_kw"] <= vals["p_max_kw"], "diesel.p_min_kw",
             f"p_min_kw <= p_max_kw ({vals['p_max_kw']})", vals["p_min_kw"])
    return Diesel(on0=bool(on0), **vals)


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InstanceError(f"{field}: expected an integer, got {value!r}")
    return int(value)


def _jobs(raw: Any, horizon: int) -> tuple:
    """The optional `jobs` array: at most MAX_JOBS objects, each window inside the horizon and long
    enough for its job."""
    if not isinstance(raw, list):
        raise InstanceError(f"jobs: expected an array of job objects, got {type(raw).__name__}")
    if len(raw) > MAX_JOBS:
        raise InstanceError(f"jobs: expected at most {MAX_JOBS} jobs, got {len(raw)}")
    out = []
    for i, obj in enumerate(raw):
        where = f"jobs[{i}]"
        _check_keys(obj, _JOB_KEYS, where)
        kw = _number(obj["kw"], f"{where}.kw")
        _require(kw >= 0, f"{where}.kw", "a value >= 0", kw)
        dur = _int(obj["duration_steps"], f"{where}.duration_steps")
        early = _int(obj["earliest_step"], f"{where}.earliest_step")
        end = _int(obj["deadline_step"], f"{where}.deadline_step")
        _require(1 <= dur <= horizon, f"{where}.duration_steps", f"an integer in [1, {horizon}] (the horizon)", dur)
        _require(0 <= early <= horizon - dur, f"{where}.earliest_step",
                 f"an integer in [0, {horizon - dur}] (horizon - duration_steps)", early)
        _require(early + dur <= end <= horizon, f"{where}.deadline_step",
                 f"an integer in [{early + dur}, {horizon}] (earliest_step + duration_steps .. horizon)", end)
        split = obj["splittable"]
        if not isinstance(split, bool):
            raise InstanceError(f"{where}.splittable: expected true/false, got {split!r}")
        out.append(Job(kw, dur, early, end, split))
    return tuple(out)


def instance_from_dict(obj: Any) -> PlanInstance:
    """Validate a decoded instance JSON and build a PlanInstance (raises InstanceError)."""
    jobs = ()
    if isinstance(obj, dict) and "jobs" in obj:
        obj = dict(obj)
        raw_jobs = obj.pop("jobs")
    else:
        raw_jobs = None
    _check_keys(obj, _TOP_ARRAYS + _TOP_SCALARS + ("battery", "diesel"), "instance")
    load = _array(obj["load_kw"], "load_kw", None)
    horizon = int(load.shape[0])
    if horizon < 1:
        raise InstanceError("load_kw: expected at least 1 value, got 0")
    arrays = {"load_kw": load}
    for k in _TOP_ARRAYS[1:]:
        arrays[k] = _array(obj[k], k, horizon)
    for k in _NONNEG_ARRAYS:
        bad = np.flatnonzero(arrays[k] < 0)
        if bad.size:
            raise InstanceError(f"{k}[{bad[0]}]: expected a value >= 0, got {arrays[k][bad[0]]!r}")
    scalars = {k: _number(obj[k], k) for k in _TOP_SCALARS}
    _require(MIN_DIVISOR <= scalars["dt_h"] <= MAX_DT_H, "dt_h", f"a step length in [{MIN_DIVISOR:g}, {MAX_DT_H:g}] "
             "hours", scalars["dt_h"])
    for k in ("export_max_kw", "peak_price_per_kw", "unserved_penalty_per_kwh",
              "soc_shortfall_penalty_per_kwh"):
        _require(scalars[k] >= 0, k, "a value >= 0", scalars[k])
    if raw_jobs is not None:
        jobs = _jobs(raw_jobs, horizon)
    return PlanInstance(battery=_battery(obj["battery"], horizon), diesel=_diesel(obj["diesel"]),
                        jobs=jobs, **arrays, **scalars)


def load_instance(path) -> PlanInstance:
    """Read and validate an instance JSON file (raises InstanceError naming the field)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InstanceError(f"{path}: cannot read instance ({exc.strerror or exc})") from exc
    return parse_instance(raw, path)


def parse_instance(raw: bytes, path) -> PlanInstance:
    """Validate an instance's bytes; `path` names it in errors (a file, or `stdin:LINE`)."""
    if len(raw) > MAX_FILE_BYTES:
        raise InstanceError(f"{path}: larger than {MAX_FILE_BYTES} bytes (an instance of {MAX_HORIZON} steps "
                            "fits in far less)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InstanceError(f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None
    depth = _max_depth(text)
    if depth > MAX_DEPTH:
        raise InstanceError(f"{path}: JSON nested {depth} levels deep, expected at most {MAX_DEPTH}")
    try:
        obj = json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise InstanceError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except (ValueError, RecursionError) as exc:     # the depth scan makes RecursionError moot; kept as a net
        raise InstanceError(f"{path}: {exc}") from None
    return instance_from_dict(obj)


class _HugeInt:
    """An integer literal too long to be a sane value: kept unconverted so _number names its field."""

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"an integer of {self.digits} digits"


def _bounded_int(literal: str):
    digits = len(literal.lstrip("-"))
    return _HugeInt(digits) if digits > MAX_INT_DIGITS else int(literal)


def _max_depth(text: str) -> int:
    """The deepest [ / { nesting outside strings: checked before json.loads, which would recurse that deep."""
    depth = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > best:
                best = depth
                if best > MAX_DEPTH:
                    return best
        elif ch in "]}":
            depth -= 1
    return best


def instance_to_dict(inst: PlanInstance) -> dict:
    """The JSON form of an instance (the inverse of instance_from_dict); used by tools and tests."""
    b = inst.battery
    out = {k: [float(v) for v in getattr(inst, k)] for k in _TOP_ARRAYS}
    out.update({k: float(getattr(inst, k)) for k in _TOP_SCALARS})
    bat = {k: float(getattr(b, k)) for k in _BATTERY_KEYS if k != "reserve_pct"}
    bat["reserve_pct"] = [float(v) for v in b.reserve_pct]
    out["battery"] = bat
    if inst.diesel is None:
        out["diesel"] = None
    else:
        d = {k: float(getattr(inst.diesel, k)) for k in _DIESEL_KEYS if k != "on0"}
        d["on0"] = bool(inst.diesel.on0)
        out["diesel"] = d
    if inst.jobs:
        out["jobs"] = [{"kw": float(j.kw), "duration_steps": int(j.duration_steps), "earliest_step": int(j.earliest_step),
                        "deadline_step": int(j.deadline_step), "splittable": bool(j.splittable)} for j in inst.jobs]
    return out


def result_to_json(result) -> dict:
    """The plan as the JSON contract of `edge-ems plan` (plain floats, soc_pct has H+1 values)."""
    def arr(a):
        return [float(v) for v in a]
    return {
        "objective": float(result.objective),
        "solve_ms": float(result.solve_ms),
        "grid_kw": arr(result.grid_kw),
        "export_kw": arr(result.export_kw),
        "charge_kw": arr(result.charge_kw),
        "discharge_kw": arr(result.discharge_kw),
        "diesel_kw": arr(result.diesel_kw),
        "curtail_kw": arr(result.curtail_kw),
        "unserved_kw": arr(result.unserved_kw),
        "soc_pct": arr(result.soc_pct),
        "diesel_on": [bool(v) for v in result.diesel_on],
        "peak_kw": float(result.peak_kw),
        "gap_bound": float(result.gap_bound),
        **({"jobs": [{"start_step": int(np.argmax(r)) if r.any() else None,
                      "run_steps": [int(t) for t in np.flatnonzero(r)]} for r in result.job_run]}
           if getattr(result, "job_run", None) is not None else {}),
    }


def _load_kernels() -> tuple[object, float]:
    """The planner's kernels, loaded (from the numba cache) and run once before any timed solve: what a
    first call used to pay inside its `solve_ms` (~330 ms against 0.2 ms for the solve itself)."""
    t0 = time.perf_counter()
    from controller.core.mpc import solve, warm_up  # imported here: loading numba is only needed to solve
    from controller.core.mpc import deferrable
    warm_up()
    deferrable.warm_up()

    def solve_any(inst):
        return deferrable.solve_jobs(inst) if inst.jobs else solve(inst)
    return solve_any, (time.perf_counter() - t0) * 1e3


def plan_main(path) -> int:
    """`edge-ems plan FILE.json`: print the plan JSON and return 0, or print the error and return 2.
    `edge-ems plan -`: a stream, one instance JSON per line on stdin, one plan (or error) per line out."""
    if str(path) == "-":
        return plan_stream(sys.stdin.buffer, sys.stdout)
    try:
        inst = load_instance(path)
    except InstanceError as exc:
        print(f"edge-ems plan: bad instance: {exc}", file=sys.stderr)
        return 2
    solve, load_ms = _load_kernels()
    print(json.dumps({**result_to_json(solve(inst)), "load_ms": round(load_ms, 3)}))
    return 0


def _bounded_lines(f, limit: int):
    """Lines of at most `limit` + 1 bytes held at a time: a longer one is read to its end in pieces and
    handed on cut (parse_instance refuses it by its size), never held whole."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
        yield line


def plan_stream(lines, out) -> int:
    """Solve each line as it comes (a caller pays the start-up once, not per instance). Each output line
    is the plan with its `solve_ms` (the solve alone) or {"line": N, "error": "..."} for a bad line,
    which does not stop the stream; the first line out also carries `load_ms` (the kernels' load).
    Returns 0 when every line was solved, 2 when any was refused."""
    solve, load_ms = _load_kernels()
    bad = n = 0
    for n, raw in enumerate(_bounded_lines(lines, MAX_FILE_BYTES), 1):
        if not raw.strip():
            continue
        try:
            rec = result_to_json(solve(parse_instance(raw.rstrip(b"\r\n"), f"stdin:{n}")))
        except InstanceError as exc:
            bad += 1
            rec = {"line": n, "error": f"bad instance: {exc}"}
        if load_ms is not None:
            rec["load_ms"], load_ms = round(load_ms, 3), None
        out.write(json.dumps(rec) + "\n")
        out.flush()
    return 2 if bad else 0
