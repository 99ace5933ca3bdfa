"""Local wind generation for the simulated site: a seeded wind-speed series and a turbine's power curve.

Why synthetic wind: pvlib's shipped TMY files (the PV shape every scenario uses) are US stations; their
wind column (Greensboro, 10 m, ~3 m/s) says nothing about Lulea or Ordos. A case site states its wind
resource instead (`[wind]` in the scenario: the long-term mean speed at a height and the Weibull shape
k, as a wind atlas gives them), and the series is drawn to that distribution:

* an AR(1) Gaussian per minute (`persistence_per_h`: the hour-to-hour correlation of the weather),
  optionally mixed with the market's regional wind driver (`market_correlation`), so that on a spot
  market the local turbine turns when the regional price and grid intensity fall (the Nordic case:
  "prices low when windy");
* mapped through the normal CDF onto a Weibull(k, c) with c = mean / Gamma(1 + 1/k) (a Gaussian copula:
  the marginal is the atlas's Weibull, the time structure the AR(1)'s);
* times a seasonal (winter peak in the north) and a diurnal factor, and a small per-minute turbulence;
* at hub height by windpowerlib's logarithmic profile (roughness length of the terrain);
* to kW by windpowerlib's density-corrected power curve of a turbine in its library (oedb data shipped
  in the package: no network), with the air density at hub height from the ambient temperature
  (windpowerlib's linear gradient and ideal gas law; cold Nordic air gives ~10 % more than 1.225 kg/m3).

The library's smallest turbines are 800 kW (Enercon E-53/800, E48/800); an edge node's turbine is a few
hundred kW. So the curve's *shape* (P / P_rated against wind speed) is taken from the library turbine and
scaled to `rated_kw` x `count`: an assumption (a small pitch-regulated turbine at a similar specific
power, ~360 W/m2 for the E-53, has a similar normalised curve), stated in docs/cases.md.

Like the other exogenous series: computed once per run as a 1-minute numpy array, seeded per day so a
longer run only adds days (tools/sim/exogenous.py). pandas and windpowerlib are imported inside.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

DAY_MIN = 1440


def weibull_scale(mean_ms: float, k: float) -> float:
    """Weibull scale c for a mean speed and shape k (mean = c * Gamma(1 + 1/k))."""
    return mean_ms / math.gamma(1.0 + 1.0 / k)


def ar1_unit(shocks: np.ndarray, persistence_per_min: float) -> np.ndarray:
    """AR(1) with unit stationary variance from standard-normal shocks (x0 = first shock: stationary)."""
    from scipy.signal import lfilter

    a = persistence_per_min
    if len(shocks) < 2:
        return shocks.astype(float).copy()
    rest = lfilter([math.sqrt(1.0 - a * a)], [1.0, -a], shocks[1:], zi=[a * shocks[0]])[0]
    return np.concatenate([shocks[:1], rest])


def speed_series_ms(wind: dict, day_rng, n: int, t_h: np.ndarray, local_h: np.ndarray, doy: np.ndarray,
                    market_z: np.ndarray | None) -> np.ndarray:
    """Wind speed (m/s) at the resource height `speed_height_m`, one value per minute.

    `day_rng(day)`: the scenario's generator for that day (seed, stream 'windspeed', day).
    `market_z`: the market's regional wind driver (unit-variance Gaussian per minute) or None."""
    from scipy.special import ndtr

    days = (n + DAY_MIN - 1) // DAY_MIN
    draws = [day_rng(d) for d in range(days)]
    shocks = np.concatenate([g.standard_normal(DAY_MIN) for g in draws])[:n]
    gusts = np.concatenate([g.standard_normal(DAY_MIN) for g in draws])[:n]
    z = ar1_unit(shocks, wind["persistence_per_h"] ** (1.0 / 60.0))
    rho = wind["market_correlation"]
    if market_z is not None and rho > 0.0:
        z = rho * market_z[:n] + math.sqrt(1.0 - rho * rho) * z
    u = np.clip(ndtr(z), 1e-9, 1.0 - 1e-9)
    k = wind["weibull_k"]
    v = weibull_scale(wind["mean_speed_ms"], k) * (-np.log1p(-u)) ** (1.0 / k)
    season = 1.0 + wind["seasonal_amp"] * np.cos(2.0 * np.pi * (doy - wind["seasonal_peak_doy"]) / 365.25)
    diurnal = 1.0 + wind["diurnal_amp"] * np.cos(2.0 * np.pi * (local_h - wind["diurnal_peak_hour"]) / 24.0)
    v = v * season * diurnal * (1.0 + wind["turbulence"] * gusts)
    return np.maximum(v, 0.0)


def library_turbines() -> list[str] | None:
    """The turbine types of windpowerlib's shipped library that have a power curve, read from its own data
    file with csv: importing windpowerlib loads pandas, and `edge-ems run` on a simulated site validates its
    scenarios in the controller's process, which must not hold pandas (tests/test_memory.py)."""
    import csv
    from importlib.util import find_spec

    spec = find_spec("windpowerlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "oedb" / "turbine_data.csv"
    with open(path, newline="") as f:
        return sorted({row["turbine_type"] for row in csv.DictReader(f)
                       if row.get("has_power_curve", "").strip().lower() == "true"})


def turbine_problem(turbine_type: str) -> str | None:
    """None when windpowerlib's library has a power curve for `turbine_type`, else what is wrong (the
    scenario's loader reports it at [wind] turbine_type with the names it knows)."""
    with_curve = library_turbines()
    if with_curve is None:
        return "windpowerlib is not installed: pip install 'edge-ems[sim]'"
    if turbine_type in with_curve:
        return None
    return (f"expected a turbine of windpowerlib's library with a power curve, got {turbine_type!r} "
            f"(known: {', '.join(with_curve)})")


def turbine_curve(wind: dict) -> tuple[np.ndarray, np.ndarray]:
    """(wind speeds m/s, kW) of the site's turbines: the library turbine's curve scaled to rated_kw x count."""
    from windpowerlib import WindTurbine

    try:
        turbine = WindTurbine(hub_height=wind["hub_height_m"], turbine_type=wind["turbine_type"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"[wind] turbine_type {wind['turbine_type']!r}: not in windpowerlib's turbine library "
                         f"({exc}); `python -c \"from windpowerlib import data; "
                         f"print(data.get_turbine_types(print_out=False))\"` lists them") from None
    curve = turbine.power_curve
    if curve is None:
        raise ValueError(f"[wind] turbine_type {wind['turbine_type']!r} has no power curve in windpowerlib's library")
    speeds = curve["wind_speed"].to_numpy(dtype=float)
    watts = curve["value"].to_numpy(dtype=float)
    kw = watts / max(float(watts.max()), 1.0) * wind["rated_kw"] * wind["count"]
    return speeds, kw


def hub_speed_ms(wind: dict, v_ref: np.ndarray) -> np.ndarray:
    """The resource-height speed carried to hub height (windpowerlib's logarithmic profile)."""
    from windpowerlib.wind_speed import logarithmic_profile

    if abs(wind["hub_height_m"] - wind["speed_height_m"]) < 1e-9:
        return v_ref
    return np.asarray(logarithmic_profile(v_ref, wind["speed_height_m"], wind["hub_height_m"],
                                          wind["roughness_length_m"]), dtype=float)


def density_kg_m3(wind: dict, ambient_c: np.ndarray, altitude_m: float) -> np.ndarray:
    """Air density at hub height: the ambient (2 m) temperature by windpowerlib's linear gradient, the
    station pressure from the site's altitude (barometric formula), the ideal gas law (windpowerlib)."""
    from windpowerlib.density import ideal_gas
    from windpowerlib.temperature import linear_gradient

    t_hub_k = np.asarray(linear_gradient(np.asarray(ambient_c, dtype=float) + 273.15, 2.0, wind["hub_height_m"]))
    p_pa = 101325.0 * (1.0 - 2.25577e-5 * altitude_m) ** 5.25588
    return np.asarray(ideal_gas(p_pa, 0.0, wind["hub_height_m"], t_hub_k), dtype=float)


def power_kw(wind: dict, v_hub: np.ndarray, density: np.ndarray) -> np.ndarray:
    """AC kW of the turbines (density-corrected power curve, windpowerlib) less electrical losses and
    the availability derate. windpowerlib maps one np.interp per sample (~4 s for a year of minutes), so
    its corrected curve is tabulated once per 0.01 kg/m3 density class (a year's series has ~30) on a
    0.02 m/s grid, and the samples of the class are read off that table."""
    from windpowerlib.power_output import power_curve_density_correction

    speeds, kw = turbine_curve(wind)
    grid = np.arange(0.0, float(speeds.max()) + 5.0, 0.02)
    out = np.empty(len(v_hub))
    classes = np.round(density, 2)
    for rho in np.unique(classes):
        sel = classes == rho
        table = np.asarray(power_curve_density_correction(grid, speeds, kw, np.full(len(grid), rho)))
        out[sel] = np.interp(v_hub[sel], grid, table, right=0.0)
    loss = (1.0 - wind["electrical_loss"]) * wind["availability"]
    return np.clip(out * loss, 0.0, wind["rated_kw"] * wind["count"])


def wind_series_kw(scn, times, local_h: np.ndarray, ambient_c: np.ndarray, day_rng,
                   market_z: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(kW, hub-height m/s) per minute for the scenario's `[wind]` (zeros when it has none)."""
    wind = scn.get("wind") or {}
    n = len(times)
    if not wind or wind["rated_kw"] <= 0.0 or wind["count"] <= 0:
        return np.zeros(n), np.zeros(n)
    t_h = np.arange(n) / 60.0
    doy = np.asarray(times.day_of_year, dtype=float)
    v_ref = speed_series_ms(wind, day_rng, n, t_h, local_h, doy, market_z)
    v_hub = hub_speed_ms(wind, v_ref)
    rho = density_kg_m3(wind, ambient_c, scn.site["site"]["altitude_m"])
    return power_kw(wind, v_hub, rho), v_hub
