"""Forecasts for the planner: PV (clear sky x learned derate x pushed weather events) and load
(a learned daily profile + announced jobs). Pure numba kernels: no I/O, no clock, no randomness.

Time always comes in as UTC epoch seconds; state lives in small float64 arrays the caller carries
(in the controller's state vector or next to it), so a replay reproduces every forecast bit for bit.

PV
--
* Solar position: the NOAA solar calculator equations (Meeus-based low-precision ephemeris: mean
  longitude/anomaly, equation of centre, obliquity with nutation term, equation of time) plus NOAA's
  atmospheric refraction correction. Accuracy vs NREL SPA (pvlib's default): ~0.01-0.02 deg in
  zenith above 5 deg elevation (tests/test_forecast.py checks <= 0.05 deg).
* Clear sky: Ineichen-Perez (as pvlib's `ineichen`, no Perez enhancement) with a Linke turbidity
  parameter, Kasten-Young 1989 air mass on the apparent zenith, pressure from the altitude, Spencer's
  extraterrestrial irradiance. Same formulas as pvlib, so with the same Linke turbidity GHI matches
  pvlib to < 1 % (tested) -- differences come from solar position only.
* Plane of array: isotropic sky (beam x cos AOI + diffuse x (1+cos tilt)/2 + ground reflection).
* AC power: kWp x POA/1000 x (1 - loss), clipped to kWp. Temperature, soiling, inverter and site
  specifics are not modelled: the learned derate absorbs them.
* Derate: two exponentially weighted *ratio-of-sums* estimators of measured PV / clear-sky PV over
  daylight samples (fast: recent clouds/dust, ~1 h; slow: systematic losses, ~3 days). Ratio of
  sums weighs samples by clear-sky energy, so low sun and dawn noise barely count. Samples taken while
  the controller curtails PV are skipped (measured PV is then not the resource). Measurements are
  divided by the weather-event factor in force, so an announced event is not learned twice.
  The forecast for lead time L blends fast -> slow with weight exp(-L / blend_tau).
* Weather events (a sandstorm warning): arrays start_s, end_s, fraction, ramp_s; inside
  [start, end) PV is multiplied by 1 - fraction * min(1, (t - start)/ramp). Overlapping events
  multiply. The forecast uses them as soon as they are pushed, so PV is cut ahead of time.

Load
----
* A 24 h profile of 15-min slot means (96 slots, by UTC time of day), each updated as an EWMA when a
  slot closes; slots never seen fall back to an EWMA of all recent slot means (the level).
* A short-term bias (last closed slot's actual minus its profile) decays with lead time.
* Announced jobs (kW, start_s, duration_s) are added over their overlap with each step, and are
  subtracted from measurements before learning so a job does not leak into the baseline.

Scoring (`mae`, `score_issued`) is plain Python for the sim and tests.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    # pv params layout
    "PV_LAT", "PV_LON", "PV_ALT", "PV_TILT", "PV_AZ", "PV_KWP", "PV_LOSS", "PV_LINKE", "PV_ALBEDO",
    "PV_FAST_TAU_S", "PV_SLOW_TAU_S", "PV_BLEND_TAU_S", "PV_DAYLIGHT_FRAC", "PV_PRIOR", "N_PV_PARAMS",
    # pv state layout
    "DS_FAST_MEAS", "DS_FAST_CLEAR", "DS_SLOW_MEAS", "DS_SLOW_CLEAR", "DS_LAST_T", "DS_N", "N_DERATE_STATE",
    # load state layout
    "N_SLOTS", "SLOT_S", "LS_LEVEL", "LS_LEVEL_N", "LS_SLOT", "LS_ACC", "LS_ACC_N", "LS_BIAS",
    "LS_BIAS_T", "LS_ALPHA", "LS_BIAS_TAU_S", "N_LOAD_STATE",
    "solar_position", "clearsky_ineichen", "poa_isotropic", "clear_pv_kw", "clear_pv_series",
    "event_factor", "derate_new_state", "derate_update", "derate_at_lead", "pv_forecast",
    "jobs_kw_at", "jobs_kw_mean", "load_new_state", "load_update", "load_forecast",
    "pv_params", "mae", "score_issued", "warm_up",
]

DEG = math.pi / 180.0

# --- PV parameter vector -------------------------------------------------------------------------
(PV_LAT, PV_LON, PV_ALT, PV_TILT, PV_AZ, PV_KWP, PV_LOSS, PV_LINKE, PV_ALBEDO,
 PV_FAST_TAU_S, PV_SLOW_TAU_S, PV_BLEND_TAU_S, PV_DAYLIGHT_FRAC, PV_PRIOR) = range(14)
N_PV_PARAMS = 14

# --- PV derate state -----------------------------------------------------------------------------
DS_FAST_MEAS, DS_FAST_CLEAR, DS_SLOW_MEAS, DS_SLOW_CLEAR, DS_LAST_T, DS_N = range(6)
N_DERATE_STATE = 6
_PRIOR_WEIGHT_S = 600.0     # the prior counts as 10 min of full-sun clear-sky samples

# --- load state ----------------------------------------------------------------------------------
N_SLOTS = 96
SLOT_S = 86400.0 / N_SLOTS
# [0:96] slot means, [96:192] slot counts, then scalars
LS_LEVEL = 2 * N_SLOTS          # EWMA of slot means (fallback for unseen slots)
LS_LEVEL_N = LS_LEVEL + 1
LS_SLOT = LS_LEVEL + 2          # absolute slot index being accumulated (floor(t / SLOT_S)), -1 none
LS_ACC = LS_LEVEL + 3           # time-weighted sum of (load - jobs) in the open slot, kW*s
LS_ACC_N = LS_LEVEL + 4         # seconds accumulated in the open slot
LS_BIAS = LS_LEVEL + 5          # last closed slot: actual - profile, kW
LS_BIAS_T = LS_LEVEL + 6        # end time of that slot, s
LS_ALPHA = LS_LEVEL + 7         # EWMA weight of a new day's slot mean
LS_BIAS_TAU_S = LS_LEVEL + 8    # decay of the short-term bias with lead time
LS_LAST_T = LS_LEVEL + 9
N_LOAD_STATE = LS_LEVEL + 10


# ================================================================= solar position and clear sky
@njit(cache=True)
def solar_position(t_s, lat_deg, lon_deg):
    """NOAA solar position at UTC epoch t_s. Returns (apparent_zenith_deg, azimuth_deg, zenith_deg);
    azimuth clockwise from north."""
    jd = t_s / 86400.0 + 2440587.5
    jc = (jd - 2451545.0) / 36525.0
    l0 = (280.46646 + jc * (36000.76983 + jc * 0.0003032)) % 360.0
    m = 357.52911 + jc * (35999.05029 - 0.0001537 * jc)
    ecc = 0.016708634 - jc * (0.000042037 + 0.0000001267 * jc)
    mr = m * DEG
    c = (math.sin(mr) * (1.914602 - jc * (0.004817 + 0.000014 * jc))
         + math.sin(2.0 * mr) * (0.019993 - 0.000101 * jc) + math.sin(3.0 * mr) * 0.000289)
    true_long = l0 + c
    omega = (125.04 - 1934.136 * jc) * DEG
    app_long = true_long - 0.00569 - 0.00478 * math.sin(omega)
    mean_obliq = 23.0 + (26.0 + (21.448 - jc * (46.815 + jc * (0.00059 - jc * 0.001813))) / 60.0) / 60.0
    obliq = (mean_obliq + 0.00256 * math.cos(omega)) * DEG
    decl = math.asin(math.sin(obliq) * math.sin(app_long * DEG))
    y = math.tan(obliq / 2.0) ** 2
    l0r = l0 * DEG
    eot_min = 4.0 / DEG * (y * math.sin(2.0 * l0r) - 2.0 * ecc * math.sin(mr)
                           + 4.0 * ecc * y * math.sin(mr) * math.cos(2.0 * l0r)
                           - 0.5 * y * y * math.sin(4.0 * l0r) - 1.25 * ecc * ecc * math.sin(2.0 * mr))
    day_s = t_s % 86400.0
    tst_min = (day_s / 60.0 + eot_min + 4.0 * lon_deg) % 1440.0
    ha = tst_min / 4.0 - 180.0
    if ha < -180.0:
        ha += 360.0
    lat = lat_deg * DEG
    cz = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(ha * DEG)
    cz = min(1.0, max(-1.0, cz))
    zen = math.acos(cz) / DEG
    # azimuth (NOAA)
    sz = math.sin(zen * DEG)
    if abs(math.cos(lat) * sz) > 1e-9:
        ca = ((math.sin(lat) * cz) - math.sin(decl)) / (math.cos(lat) * sz)
        ca = min(1.0, max(-1.0, ca))
        a = math.acos(ca) / DEG
        az = (a + 180.0) % 360.0 if ha > 0.0 else (540.0 - a) % 360.0
    else:
        az = 180.0 if lat_deg > 0.0 else 0.0
    # refraction (NOAA), degrees
    elev = 90.0 - zen
    if elev > 85.0:
        refr = 0.0
    else:
        te = math.tan(elev * DEG)
        if elev > 5.0:
            refr = 58.1 / te - 0.07 / te ** 3 + 0.000086 / te ** 5
        elif elev > -0.575:
            refr = 1735.0 + elev * (-518.2 + elev * (103.4 + elev * (-12.79 + elev * 0.711)))
        else:
            refr = -20.772 / te
        refr /= 3600.0
    return zen - refr, az, zen


@njit(cache=True)
def _day_of_year(t_s):
    """Fractional day of year (1-based) of UTC epoch t_s (proleptic Gregorian)."""
    days = math.floor(t_s / 86400.0)
    frac = t_s / 86400.0 - days
    # civil-from-days (H. Hinnant), for the year only
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy_mar = doe - (365 * yoe + yoe // 4 - yoe // 100)   # day of the March-based year
    mp = (5 * doy_mar + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    if month <= 2:
        y += 1
    # days from 1 Jan of year y to the epoch day
    yy = y - 1
    jan1 = 365 * (yy - 1969) + (yy - 1968) // 4 - (yy - 1900) // 100 + (yy - 1600) // 400
    return float(days - jan1) + 1.0 + frac


@njit(cache=True)
def clearsky_ineichen(t_s, app_zenith_deg, altitude_m, linke):
    """Ineichen-Perez clear sky (pvlib formulation, no Perez enhancement). Returns (ghi, dni, dhi) W/m2."""
    if app_zenith_deg >= 90.0:
        return 0.0, 0.0, 0.0
    cos_z = max(math.cos(app_zenith_deg * DEG), 0.0)
    am_rel = 1.0 / (cos_z + 0.50572 * (6.07995 + (90.0 - app_zenith_deg)) ** -1.6364)
    pressure = 100.0 * ((44331.514 - altitude_m) / 11880.516) ** (1.0 / 0.1902632)
    am = am_rel * pressure / 101325.0
    b = 2.0 * math.pi * (math.floor(_day_of_year(t_s)) - 1.0) / 365.0
    dni_extra = 1366.1 * (1.00011 + 0.034221 * math.cos(b) + 0.00128 * math.sin(b)
                          + 0.000719 * math.cos(2.0 * b) + 0.000077 * math.sin(2.0 * b))
    fh1 = math.exp(-altitude_m / 8000.0)
    fh2 = math.exp(-altitude_m / 1250.0)
    cg1 = 5.09e-5 * altitude_m + 0.868
    cg2 = 3.92e-5 * altitude_m + 0.0387
    ghi = cg1 * dni_extra * cos_z * max(math.exp(-cg2 * am * (fh1 + fh2 * (linke - 1.0))), 0.0)
    bb = 0.664 + 0.163 / fh1
    bnci = dni_extra * max(bb * math.exp(-0.09 * am * (linke - 1.0)), 0.0)
    if cos_z > 0.0:
        corr = (1.0 - (0.1 - 0.2 * math.exp(-linke)) / (0.1 + 0.882 / fh1)) / cos_z
        bnci2 = ghi * min(max(corr, 0.0), 1e20)
    else:
        bnci2 = 0.0
    dni = min(bnci, bnci2)
    dhi = ghi - dni * cos_z
    return ghi, dni, dhi


@njit(cache=True)
def poa_isotropic(app_zenith_deg, sun_az_deg, ghi, dni, dhi, tilt_deg, surf_az_deg, albedo):
    """Plane-of-array irradiance (W/m2), isotropic sky."""
    if app_zenith_deg >= 90.0 or ghi <= 0.0:
        return 0.0
    z, tilt = app_zenith_deg * DEG, tilt_deg * DEG
    cos_aoi = (math.cos(z) * math.cos(tilt)
               + math.sin(z) * math.sin(tilt) * math.cos((sun_az_deg - surf_az_deg) * DEG))
    beam = dni * max(cos_aoi, 0.0)
    sky = dhi * (1.0 + math.cos(tilt)) / 2.0
    ground = ghi * albedo * (1.0 - math.cos(tilt)) / 2.0
    return max(0.0, beam + sky + ground)


@njit(cache=True)
def clear_pv_kw(t_s, pv):
    """Clear-sky AC PV (kW) at t_s for the PV parameter vector `pv` (N_PV_PARAMS)."""
    app_z, az, _ = solar_position(t_s, pv[PV_LAT], pv[PV_LON])
    if app_z >= 90.0:
        return 0.0
    ghi, dni, dhi = clearsky_ineichen(t_s, app_z, pv[PV_ALT], pv[PV_LINKE])
    poa = poa_isotropic(app_z, az, ghi, dni, dhi, pv[PV_TILT], pv[PV_AZ], pv[PV_ALBEDO])
    return min(pv[PV_KWP], pv[PV_KWP] * poa / 1000.0 * (1.0 - pv[PV_LOSS]))


@njit(cache=True)
def clear_pv_series(t0_s, n, step_s, pv, out):
    """out[k] = clear_pv_kw(t0_s + k*step_s) for k < n (instantaneous samples)."""
    for k in range(n):
        out[k] = clear_pv_kw(t0_s + k * step_s, pv)


# ================================================================= weather events
@njit(cache=True)
def event_factor(t_s, ev_start_s, ev_end_s, ev_fraction, ev_ramp_s, n_ev):
    """PV multiplier at t_s from the pushed weather events (1.0 = no effect)."""
    f = 1.0
    for i in range(n_ev):
        if ev_start_s[i] <= t_s < ev_end_s[i]:
            ramp = ev_ramp_s[i]
            depth = 1.0 if ramp <= 0.0 else min(1.0, (t_s - ev_start_s[i]) / ramp)
            f *= 1.0 - min(1.0, max(0.0, ev_fraction[i])) * depth
    return f


# ================================================================= derate learning
@njit(cache=True)
def derate_new_state(pv, state):
    """Initialise a derate state (N_DERATE_STATE) with the prior derate pv[PV_PRIOR]."""
    w = _PRIOR_WEIGHT_S * pv[PV_KWP]
    state[DS_FAST_MEAS] = pv[PV_PRIOR] * w
    state[DS_FAST_CLEAR] = w
    state[DS_SLOW_MEAS] = pv[PV_PRIOR] * w
    state[DS_SLOW_CLEAR] = w
    state[DS_LAST_T] = -1.0
    state[DS_N] = 0.0


@njit(cache=True)
def derate_update(state, pv, t_s, measured_kw, clear_kw, ev_factor, curtailed):
    """Learn from one PV measurement at t_s (in place). `clear_kw`: clear_pv_kw(t_s); `ev_factor`:
    event_factor(t_s, ...) in force; `curtailed`: True while the controller limits the inverters
    (the sample is skipped). Returns True when the sample was used."""
    last = state[DS_LAST_T]
    dt = 0.0 if last < 0.0 else min(max(t_s - last, 0.0), 3600.0)
    state[DS_LAST_T] = t_s
    if curtailed or clear_kw < pv[PV_DAYLIGHT_FRAC] * pv[PV_KWP] or ev_factor < 0.05:
        return False
    if dt <= 0.0:
        return False
    ratio_meas = max(0.0, measured_kw) / ev_factor
    # ratio of exponentially weighted sums: weights decay with elapsed daylight time
    df = math.exp(-dt / pv[PV_FAST_TAU_S])
    ds = math.exp(-dt / pv[PV_SLOW_TAU_S])
    state[DS_FAST_MEAS] = state[DS_FAST_MEAS] * df + min(ratio_meas, 1.5 * clear_kw) * dt
    state[DS_FAST_CLEAR] = state[DS_FAST_CLEAR] * df + clear_kw * dt
    state[DS_SLOW_MEAS] = state[DS_SLOW_MEAS] * ds + min(ratio_meas, 1.5 * clear_kw) * dt
    state[DS_SLOW_CLEAR] = state[DS_SLOW_CLEAR] * ds + clear_kw * dt
    state[DS_N] += 1.0
    return True


@njit(cache=True)
def derate_at_lead(state, pv, lead_s):
    """The derate to apply lead_s seconds ahead: fast estimate blending into the slow one."""
    fast = state[DS_FAST_MEAS] / max(state[DS_FAST_CLEAR], 1e-12)
    slow = state[DS_SLOW_MEAS] / max(state[DS_SLOW_CLEAR], 1e-12)
    w = math.exp(-max(lead_s, 0.0) / pv[PV_BLEND_TAU_S])
    return min(1.5, max(0.0, w * fast + (1.0 - w) * slow))


@njit(cache=True)
def pv_forecast(t0_s, H, dt_h, pv, state, ev_start_s, ev_end_s, ev_fraction, ev_ramp_s, n_ev, n_sub, out):
    """out[k] (k < H): forecast mean PV kW over [t0 + k*dt, t0 + (k+1)*dt), from n_sub mid-point
    samples per step of clear sky x derate(lead) x weather events."""
    step_s = dt_h * 3600.0
    sub_s = step_s / n_sub
    for k in range(H):
        acc = 0.0
        for j in range(n_sub):
            t = t0_s + k * step_s + (j + 0.5) * sub_s
            c = clear_pv_kw(t, pv)
            if c > 0.0:
                acc += c * derate_at_lead(state, pv, t - t0_s) * event_factor(
                    t, ev_start_s, ev_end_s, ev_fraction, ev_ramp_s, n_ev)
        out[k] = min(pv[PV_KWP], acc / n_sub)


# ================================================================= load
@njit(cache=True)
def jobs_kw_at(t_s, job_kw, job_start_s, job_dur_s, n_jobs):
    p = 0.0
    for i in range(n_jobs):
        if job_start_s[i] <= t_s < job_start_s[i] + job_dur_s[i]:
            p += job_kw[i]
    return p


@njit(cache=True)
def jobs_kw_mean(a_s, b_s, job_kw, job_start_s, job_dur_s, n_jobs):
    """Mean kW of the announced jobs over [a_s, b_s) (overlap-weighted)."""
    if b_s <= a_s:
        return 0.0
    e = 0.0
    for i in range(n_jobs):
        lo = max(a_s, job_start_s[i])
        hi = min(b_s, job_start_s[i] + job_dur_s[i])
        if hi > lo:
            e += job_kw[i] * (hi - lo)
    return e / (b_s - a_s)


@njit(cache=True)
def load_new_state(state, alpha, bias_tau_s, level0_kw):
    """Initialise a load state (N_LOAD_STATE). level0_kw: the prior level (<0: none)."""
    for i in range(N_LOAD_STATE):
        state[i] = 0.0
    state[LS_SLOT] = -1.0
    state[LS_ALPHA] = alpha
    state[LS_BIAS_TAU_S] = bias_tau_s
    state[LS_LAST_T] = -1.0
    if level0_kw >= 0.0:
        state[LS_LEVEL] = level0_kw
        state[LS_LEVEL_N] = 1.0


@njit(cache=True)
def _profile_at(state, slot_abs):
    s = int(slot_abs % N_SLOTS)
    if state[N_SLOTS + s] > 0.0:
        return state[s]
    return state[LS_LEVEL]


@njit(cache=True)
def _close_slot(state):
    slot_abs = state[LS_SLOT]
    if slot_abs < 0.0 or state[LS_ACC_N] <= 0.0:
        return
    mean = state[LS_ACC] / state[LS_ACC_N]
    s = int(slot_abs % N_SLOTS)
    a = state[LS_ALPHA]
    prior = _profile_at(state, slot_abs)
    if state[LS_LEVEL_N] > 0.0 or state[N_SLOTS + s] > 0.0:
        state[LS_BIAS] = mean - prior
    else:
        state[LS_BIAS] = 0.0
    state[LS_BIAS_T] = (slot_abs + 1.0) * SLOT_S
    if state[N_SLOTS + s] > 0.0:
        state[s] = (1.0 - a) * state[s] + a * mean
    else:
        state[s] = mean
    state[N_SLOTS + s] += 1.0
    if state[LS_LEVEL_N] > 0.0:
        al = 1.0 / 16.0                          # level: ~4 h of slot means
        state[LS_LEVEL] = (1.0 - al) * state[LS_LEVEL] + al * mean
    else:
        state[LS_LEVEL] = mean
    state[LS_LEVEL_N] += 1.0


@njit(cache=True)
def load_update(state, t_s, load_kw, job_kw, job_start_s, job_dur_s, n_jobs):
    """Learn from one load measurement at t_s (in place), held until the next sample. The announced
    jobs running at t_s are subtracted first, so the baseline learns the load without them."""
    last = state[LS_LAST_T]
    slot_abs = math.floor(t_s / SLOT_S)
    if slot_abs != state[LS_SLOT]:
        _close_slot(state)
        state[LS_SLOT] = slot_abs
        state[LS_ACC] = 0.0
        state[LS_ACC_N] = 0.0
    dt = 1.0 if last < 0.0 else min(max(t_s - last, 1e-3), SLOT_S)
    base = load_kw - jobs_kw_at(t_s, job_kw, job_start_s, job_dur_s, n_jobs)
    state[LS_ACC] += base * dt
    state[LS_ACC_N] += dt
    state[LS_LAST_T] = t_s


@njit(cache=True)
def load_forecast(t0_s, H, dt_h, state, job_kw, job_start_s, job_dur_s, n_jobs, out):
    """out[k]: forecast mean load kW over [t0 + k*dt, t0 + (k+1)*dt): slot profile (time-weighted over
    the slots the step spans) + decaying recent bias + announced jobs."""
    step_s = dt_h * 3600.0
    for k in range(H):
        a = t0_s + k * step_s
        b = a + step_s
        acc = 0.0
        t = a
        while t < b - 1e-9:
            slot_abs = math.floor(t / SLOT_S)
            nxt = min(b, (slot_abs + 1.0) * SLOT_S)
            acc += _profile_at(state, slot_abs) * (nxt - t)
            t = nxt
        base = acc / step_s
        if state[LS_BIAS_T] > 0.0:
            lead = max(0.0, 0.5 * (a + b) - state[LS_BIAS_T])
            base += state[LS_BIAS] * math.exp(-lead / state[LS_BIAS_TAU_S])
        out[k] = max(0.0, base) + jobs_kw_mean(a, b, job_kw, job_start_s, job_dur_s, n_jobs)


# ================================================================= Python helpers (not in the step)
def pv_params(latitude: float, longitude: float, altitude_m: float = 0.0, kwp: float = 0.0,
              tilt_deg: float = 30.0, azimuth_deg: float = 180.0, loss: float = 0.14, linke: float = 3.0,
              albedo: float = 0.25, fast_tau_s: float = 3600.0, slow_tau_s: float = 3 * 86400.0,
              blend_tau_s: float = 7200.0, daylight_frac: float = 0.05, prior: float = 1.0) -> np.ndarray:
    """The PV parameter vector. `loss`: system losses applied to clear-sky DC (the derate learns the rest)."""
    p = np.zeros(N_PV_PARAMS)
    p[PV_LAT], p[PV_LON], p[PV_ALT] = latitude, longitude, altitude_m
    p[PV_TILT], p[PV_AZ], p[PV_KWP], p[PV_LOSS] = tilt_deg, azimuth_deg, kwp, loss
    p[PV_LINKE], p[PV_ALBEDO] = linke, albedo
    p[PV_FAST_TAU_S], p[PV_SLOW_TAU_S], p[PV_BLEND_TAU_S] = fast_tau_s, slow_tau_s, blend_tau_s
    p[PV_DAYLIGHT_FRAC], p[PV_PRIOR] = daylight_frac, prior
    return p


def mae(forecast, actual) -> float:
    """Mean absolute error between two equal-length arrays (NaNs in `actual` are ignored)."""
    f = np.asarray(forecast, dtype=float)
    a = np.asarray(actual, dtype=float)
    if f.shape != a.shape:
        raise ValueError(f"forecast and actual differ in shape: {f.shape} vs {a.shape}")
    ok = np.isfinite(a)
    return float(np.mean(np.abs(f[ok] - a[ok]))) if ok.any() else float("nan")


def score_issued(issued, actual_t_s, actual_kw, dt_h: float) -> dict:
    """Score forecasts issued during a run against what happened.

    issued: iterable of (t0_s, values) -- each a forecast of step means from t0_s in steps of dt_h.
    actual_t_s / actual_kw: the measured series (e.g. 1-min samples, held until the next sample).
    Returns {"mae": overall, "mae_by_lead": [per step index], "bias": mean(f - a), "n": samples,
    "nmae": mae / mean(actual)}; steps not fully covered by the measurements are skipped.
    """
    t = np.asarray(actual_t_s, dtype=float)
    y = np.asarray(actual_kw, dtype=float)
    if t.size < 2:
        return {"mae": float("nan"), "mae_by_lead": [], "bias": float("nan"), "n": 0, "nmae": float("nan")}
    step_s = dt_h * 3600.0
    # cumulative energy for exact step means of a piecewise-constant series
    seg = np.diff(t)
    cum = np.concatenate([[0.0], np.cumsum(y[:-1] * seg)])

    def energy_at(x):
        i = np.clip(np.searchsorted(t, x, side="right") - 1, 0, t.size - 1)
        return cum[i] + y[i] * (x - t[i])

    errs: dict[int, list] = {}
    all_err, all_act = [], []
    for t0, values in issued:
        v = np.asarray(values, dtype=float)
        a = t0 + np.arange(v.size) * step_s
        b = a + step_s
        ok = (a >= t[0]) & (b <= t[-1])
        if not ok.any():
            continue
        means = (energy_at(b[ok]) - energy_at(a[ok])) / step_s
        e = v[ok] - means
        for k, ek in zip(np.flatnonzero(ok), e):
            errs.setdefault(int(k), []).append(abs(ek))
        all_err.append(e)
        all_act.append(means)
    if not all_err:
        return {"mae": float("nan"), "mae_by_lead": [], "bias": float("nan"), "n": 0, "nmae": float("nan")}
    e = np.concatenate(all_err)
    act = np.concatenate(all_act)
    by_lead = [float(np.mean(errs[k])) if k in errs else float("nan") for k in range(max(errs) + 1)]
    m = float(np.mean(np.abs(e)))
    return {"mae": m, "mae_by_lead": by_lead, "bias": float(np.mean(e)), "n": int(e.size),
            "nmae": m / float(np.mean(np.abs(act))) if np.mean(np.abs(act)) > 0 else float("nan")}


def warm_up() -> None:
    """Compile every kernel (call before the first cycle)."""
    pv = pv_params(40.0, 110.0, 1000.0, 100.0)
    ds = np.zeros(N_DERATE_STATE)
    derate_new_state(pv, ds)
    t0 = 1.78e9
    c = clear_pv_kw(t0, pv)
    derate_update(ds, pv, t0, 0.5 * c, c, 1.0, False)
    e = np.zeros(1)
    out = np.zeros(4)
    pv_forecast(t0, 4, 0.25, pv, ds, e, e, e, e, 0, 3, out)
    ls = np.zeros(N_LOAD_STATE)
    load_new_state(ls, 0.3, 3600.0, -1.0)
    load_update(ls, t0, 10.0, e, e, e, 0)
    load_forecast(t0, 4, 0.25, ls, e, e, e, 0, out)
    clear_pv_series(t0, 4, 60.0, pv, out)
