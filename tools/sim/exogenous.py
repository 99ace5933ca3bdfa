"""What the site does not control: PV resource, compute load, weather, grid supply, prices, carbon.

Computed once per run as 1-minute series (pvlib is vectorised; a per-cycle call would dominate the
run), then sampled by the physics each cycle. Seeded: the same scenario and seed give the same site.

pandas and pvlib (which pulls in scipy and h5py) are imported only inside the functions that compute the
series: a run samples plain numpy arrays, and `edge-ems run` computes them in a child process
(:func:`start_series_apart`) so those ~80 MB never stay resident beside the controller.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable
from zoneinfo import ZoneInfo

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from tools.sim.scenario import Scenario

MINUTE_S = 60.0


@dataclass
class Series:
    """1-minute series over the run (index 0 = scenario start). kW unless named otherwise."""

    t_min: np.ndarray
    pv_avail_kw: np.ndarray
    pv_clear_kw: np.ndarray        # without events (what a forecaster would expect)
    it_kw: np.ndarray
    cooling_kw: np.ndarray
    aux_kw: np.ndarray
    ambient_c: np.ndarray
    grid_up: np.ndarray            # 1.0 / 0.0
    price_per_kwh: np.ndarray
    co2_kg_per_kwh: np.ndarray
    bms_silent: np.ndarray         # 1.0 while the BMS is silent
    meter_silent: np.ndarray
    cell_offset_v: np.ndarray      # added to the highest cell (cell_imbalance events)
    genset_fail: np.ndarray        # 1.0 while the genset will not start
    jobs: list                     # announced jobs: dicts with at_h, start_h, duration_min, kw
    wind_kw: np.ndarray | None = None        # on-site wind AC kW available (tools/sim/wind.py); None: no [wind]
    wind_speed_ms: np.ndarray | None = None  # at hub height
    cfe_pct: np.ndarray | None = None        # the grid's carbon-free share, %; None: the profile's static one

    def at(self, name: str, t_s: float) -> float:
        """Linear interpolation for continuous series."""
        arr = getattr(self, name)
        x = t_s / MINUTE_S
        i = int(x)
        if i >= len(arr) - 1:
            return float(arr[-1])
        f = x - i
        return float(arr[i] * (1.0 - f) + arr[i + 1] * f)

    def flag(self, name: str, t_s: float) -> bool:
        arr = getattr(self, name)
        i = min(int(t_s / MINUTE_S), len(arr) - 1)
        return arr[i] > 0.5


def _local_hours(times_utc: pd.DatetimeIndex, tz: str) -> np.ndarray:
    local = times_utc.tz_convert(ZoneInfo(tz))
    return np.asarray(local.hour + local.minute / 60.0, dtype=float)


def pv_series_kw(scn: Scenario, times: pd.DatetimeIndex, ambient_c: np.ndarray) -> np.ndarray:
    """PV AC power at the site: TMY clearness shape x site clear sky, transposed and derated by pvlib."""
    import pvlib

    site, pv = scn.site["site"], scn["pv"]
    if pv["kwp"] <= 0:
        return np.zeros(len(times))
    path = os.path.join(os.path.dirname(pvlib.__file__), "data", pv["tmy_file"])
    tmy, meta = pvlib.iotools.read_tmy3(path, map_variables=True)
    tmy_loc = pvlib.location.Location(meta["latitude"], meta["longitude"], altitude=meta["altitude"])
    tmy_times = tmy.index
    tmy_clear = tmy_loc.get_clearsky(tmy_times, model="ineichen")["ghi"].to_numpy()
    kt = np.where(tmy_clear > 30.0, tmy["ghi"].to_numpy() / np.maximum(tmy_clear, 1.0), np.nan)
    kt = np.clip(np.nan_to_num(kt, nan=1.0), 0.0, 1.1)
    # The same day of year and local solar hour at the site picks the TMY hour.
    tmy_solar_h = (tmy_times.hour.to_numpy() + 0.5 - meta["longitude"] / 15.0 + meta["TZ"]) % 24
    tmy_doy = tmy_times.day_of_year.to_numpy()
    kt_table = np.ones((367, 24))
    kt_table[tmy_doy, tmy_solar_h.astype(int) % 24] = kt
    loc = pvlib.location.Location(site["latitude"], site["longitude"], altitude=site["altitude_m"])
    solpos = loc.get_solarposition(times)
    clear = loc.get_clearsky(times, model="ineichen", solar_position=solpos)
    solar_h = ((times.hour + times.minute / 60.0).to_numpy() + site["longitude"] / 15.0) % 24
    doy = ((times.day_of_year.to_numpy() - 1 + pv["tmy_day_offset"]) % 365) + 1
    ghi = clear["ghi"].to_numpy() * kt_table[doy, solar_h.astype(int) % 24]
    erbs = pvlib.irradiance.erbs(ghi, solpos["zenith"], times)
    poa = pvlib.irradiance.get_total_irradiance(
        pv["tilt_deg"], pv["azimuth_deg"], solpos["apparent_zenith"], solpos["azimuth"],
        erbs["dni"], ghi, erbs["dhi"], model="isotropic")["poa_global"].to_numpy()
    poa = np.nan_to_num(poa, nan=0.0)
    cell_c = pvlib.temperature.faiman(poa, ambient_c, wind_speed=2.0)
    dc_w = pvlib.pvsystem.pvwatts_dc(poa, cell_c, pv["kwp"] * 1000.0, pv["temp_coeff_per_c"])
    ac_kw = np.asarray(dc_w) / 1000.0 * (1.0 - pv["system_loss"]) * (1.0 - pv["soiling"])
    return np.clip(np.nan_to_num(ac_kw, nan=0.0), 0.0, pv["kwp"])


DAY_MIN = 1440
_STREAMS = {"ambient": 1, "it_noise": 2, "jobs": 3, "wind": 4, "spot": 5, "windspeed": 6}


def _day_rng(seed: int, stream: str, day: int) -> np.random.Generator:
    """One generator per (seed, stream, day): day d's draws never depend on how long the run is."""
    return np.random.default_rng([seed, _STREAMS[stream], day])


def _shocks(seed: int, stream: str, n: int, scale: float) -> np.ndarray:
    days = (n + DAY_MIN - 1) // DAY_MIN
    return np.concatenate([_day_rng(seed, stream, d).normal(0.0, scale, DAY_MIN) for d in range(days)])[:n]


def _ar1(seed: int, stream: str, n: int, persistence: float, sigma: float) -> np.ndarray:
    shocks = _shocks(seed, stream, n, sigma * np.sqrt(1 - persistence ** 2))
    out = np.zeros(n)
    for i in range(1, n):
        out[i] = persistence * out[i - 1] + shocks[i]
    return out


def _training_jobs(seed: int, load: dict, hours: float) -> list[tuple[float, float]]:
    """(start_h, duration_h) of the training jobs; drawn per day so a longer run only adds days."""
    jobs = []
    for day in range(int(np.ceil(hours / 24.0))):
        rng = _day_rng(seed, "jobs", day)
        for _ in range(rng.poisson(load["training_jobs_per_day"])):
            start_h = 24.0 * day + rng.uniform(0, 24.0)
            jobs.append((start_h, rng.uniform(load["training_hours_min"], load["training_hours_max"])))
    return jobs


def _window(t_h: np.ndarray, at_h: float, duration_min: float) -> np.ndarray:
    return (t_h >= at_h) & (t_h < at_h + duration_min / 60.0)


def build_series(scn: Scenario, hours: float, seed: int) -> Series:
    import pandas as pd

    n = int(np.ceil(hours * 60)) + 2
    t_min = np.arange(n, dtype=float)
    t_h = t_min / 60.0
    times = pd.DatetimeIndex(pd.Timestamp(scn.start) + pd.to_timedelta(t_min, unit="min"))
    tz = scn.site["site"]["timezone"]
    local_h = _local_hours(times, tz)

    amb = scn["ambient"]
    ambient_c = amb["mean_c"] + amb["swing_c"] * np.cos(2 * np.pi * (local_h - amb["peak_hour"]) / 24.0)
    ambient_c = ambient_c + _ar1(seed, "ambient", n, 0.995, 1.0)

    pv_clear_kw = pv_series_kw(scn, times, ambient_c)
    pv_avail_kw = pv_clear_kw.copy()

    load = scn["load"]
    it_kw = load["it_idle_kw"] + load["inference_peak_kw"] * 0.5 * (
        1.0 + np.cos(2 * np.pi * (local_h - load["inference_peak_hour"]) / 24.0))
    for start_h, dur_h in _training_jobs(seed, load, hours):
        it_kw = it_kw + load["training_kw"] * ((t_h >= start_h) & (t_h < start_h + dur_h))
    it_kw = it_kw + _ar1(seed, "it_noise", n, 0.9, load["noise_kw"])

    grid_up = np.ones(n)
    bms_silent = np.zeros(n)
    meter_silent = np.zeros(n)
    cell_offset_v = np.zeros(n)
    genset_fail = np.zeros(n)
    jobs = []
    for ev in scn["events"]:
        win = _window(t_h, ev["at_h"], ev["duration_min"])
        kind = ev["kind"]
        if kind == "grid_outage":
            grid_up[win] = 0.0
        elif kind == "pv_derate":
            ramp_h = max(ev["ramp_min"], 1e-6) / 60.0
            depth = np.clip((t_h - ev["at_h"]) / ramp_h, 0.0, 1.0) * ev["fraction"]
            pv_avail_kw = np.where(win, pv_avail_kw * (1.0 - depth), pv_avail_kw)
        elif kind == "load_step":
            it_kw = it_kw + np.where(win, ev["kw"], 0.0)
        elif kind == "bms_silent":
            bms_silent[win] = 1.0
        elif kind == "meter_silent":
            meter_silent[win] = 1.0
        elif kind == "cell_imbalance":
            ramp_h = max(ev["ramp_min"], 1e-6) / 60.0
            depth = np.clip((t_h - ev["at_h"]) / ramp_h, 0.0, 1.0) * ev["mv"] / 1000.0
            cell_offset_v = np.where(win, cell_offset_v + depth, cell_offset_v)
        elif kind == "genset_fail":
            genset_fail[win] = 1.0
        elif kind == "job_announce":
            it_kw = it_kw + np.where(_window(t_h, ev["start_h"], ev["duration_min"]), ev["kw"], 0.0)
            jobs.append(dict(ev))
    it_kw = np.clip(it_kw, 0.0, load["it_nameplate_kw"])

    warm_c = np.maximum(0.0, ambient_c - load["free_cooling_below_c"])
    cooling_kw = it_kw * (load["cooling_base_frac"] + load["cooling_per_c"] * warm_c)
    aux_kw = np.full(n, load["aux_kw"])

    market = scn["market"]
    market_z = _ar1(seed, "wind", n, market["wind_persistence"] ** (1 / 60), 0.25)
    wind = np.clip(market["wind_mean"] + market_z, 0, 1)
    wind_kw = wind_speed = None
    if scn.get("wind"):            # on-site turbines, their speed tied to the market's regional wind driver
        from tools.sim.wind import wind_series_kw
        wind_kw, wind_speed = wind_series_kw(scn, times, local_h, ambient_c,
                                             lambda d: _day_rng(seed, "windspeed", d), market_z / 0.25)
    cfe_pct = None
    if market["kind"] == "spot":
        daily = np.exp(-((local_h - 8.0) ** 2) / 4.0) + np.exp(-((local_h - 18.0) ** 2) / 6.0)
        hourly_idx = (t_min // 60).astype(int)
        noise = _shocks(seed, "spot", hourly_idx.max() + 1, market["spot_noise"])[hourly_idx]
        price = market["spot_base"] + market["spot_daily_amp"] * daily - market["spot_wind_coeff"] * (
            wind - market["wind_mean"]) + noise
        price = _hold_hourly(price, t_min)
        co2 = _hold_hourly(np.clip(market["co2_base_kg_per_kwh"] - market["co2_wind_coeff"] * (
            wind - market["wind_mean"]), 0.01, 2.0), t_min)
        fossil = market["co2_fossil_kg_per_kwh"]
        if fossil > 0.0:           # a two-part mix: fossil at that factor, the rest carbon-free
            cfe_pct = 100.0 * np.clip(1.0 - co2 / fossil, 0.0, 1.0)
    else:
        tariff = scn.site["tariff"]["import_price_per_kwh"]
        table = np.asarray(tariff if isinstance(tariff, list) else [tariff] * 24)
        price = table[local_h.astype(int) % 24]
        co2 = np.full(n, scn.site["emissions"]["grid_kg_per_kwh"])
    return Series(t_min, pv_avail_kw, pv_clear_kw, it_kw, cooling_kw, aux_kw, ambient_c, grid_up, price,
                  co2, bms_silent, meter_silent, cell_offset_v, genset_fail, jobs, wind_kw, wind_speed, cfe_pct)


def start_series_apart(scn: Scenario, hours: float, seed: int) -> Callable[[], Series]:
    """Start :func:`build_series` in a child interpreter; the returned function waits for it and gives the
    same numpy arrays, without this process ever importing pandas, pvlib or scipy. Used by `edge-ems run`,
    whose resident memory is the gateway's footprint: the child (~140 MB at its peak, ~1 s) runs while the
    controller loads its kernels, then exits; its result is kept beside numba's cache, so a restart with
    the same scenario, hours and seed starts no child at all. A plain subprocess with pickles on its
    pipes, not multiprocessing, which would leave a resource-tracker process (13 MB) running beside the
    controller."""
    import pickle
    import subprocess
    import sys

    stored = _series_store_path(scn, hours, seed)
    if stored is not None and stored.exists():             # a restart: same scenario, hours and seed
        try:
            series = pickle.loads(stored.read_bytes())
            return lambda: series
        except Exception:                                 # unreadable: computed (and stored) afresh
            pass
    proc = subprocess.Popen([sys.executable, "-c", "from tools.sim.exogenous import _series_child; _series_child()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc.stdin.write(pickle.dumps((scn, hours, seed)))       # now: the child works while the caller does
    proc.stdin.close()

    def result() -> Series:
        out = proc.stdout.read()
        proc.stdout.close()
        proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"computing the exogenous series of scenario {scn.name!r} in a child process "
                               f"failed (exit {proc.returncode}; its error is above)")
        if stored is not None:
            _store(stored, out)
        return pickle.loads(out)
    return result


SERIES_KEEP = 8      # stored series kept (newest first); each is ~100 kB per simulated day


def _series_store_path(scn: Scenario, hours: float, seed: int):
    """Where the series of (scenario, site, hours, seed) are kept between runs: beside numba's cache
    (controller/__init__.py), keyed by their inputs, this file's source and the versions of the libraries
    that compute them, so any change computes afresh. None when there is no cache dir."""
    import hashlib
    import pickle
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    cache = os.environ.get("NUMBA_CACHE_DIR")
    if not cache:
        return None
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(pickle.dumps((dict(scn), dict(scn.site), scn.start, float(hours), int(seed))))
    h.update(Path(__file__).with_name("wind.py").read_bytes())
    for lib in ("pvlib", "pandas", "numpy", "windpowerlib"):
        try:
            h.update(f"{lib}={version(lib)}".encode())
        except PackageNotFoundError:
            h.update(lib.encode())
    return Path(cache).parent / "series" / f"{h.hexdigest()[:24]}.pkl"


def _store(path, data: bytes) -> None:
    """Write atomically (a crash leaves no half file) and keep only the newest SERIES_KEEP; best effort."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        for old in sorted(path.parent.glob("*.pkl"), key=lambda q: q.stat().st_mtime, reverse=True)[SERIES_KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def build_series_apart(scn: Scenario, hours: float, seed: int) -> Series:
    """:func:`start_series_apart`, waited for."""
    return start_series_apart(scn, hours, seed)()


def _series_child() -> None:
    """The child of :func:`start_series_apart`: (scenario, hours, seed) pickled on stdin, Series on stdout."""
    import pickle
    import sys

    scn, hours, seed = pickle.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(pickle.dumps(build_series(scn, hours, seed), protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


def _hold_hourly(values: np.ndarray, t_min: np.ndarray) -> np.ndarray:
    """Spot prices and intensities are published per hour: hold the value at each hour's start."""
    first = (t_min // 60 * 60).astype(int)
    return values[np.minimum(first, len(values) - 1)]
