"""The cloud's market feed as a spot-priced site receives it: day-ahead prices and a grid-CO2 forecast.

Why the simulator needs it: a site on an hourly spot price does not guess tomorrow's prices, it reads them.
Nord Pool's day-ahead auction publishes the next delivery day's prices at about 12:45 CET (SDAC, 15-minute
products since 2025), and intensity forecasts (Electricity Maps, Energi Data Service's CO2 prognosis) are
published a day or more ahead. The gateway takes both as the `market` message (drivers/market.py,
controller/netinputs.py) and the MPC plans on them. Without the feed, `edge-ems sim` left the MPC learning a
daily profile of the price and intensity it saw, which no Nordic site would do, and the carbon objective had
nothing to work on (issue 16: carbon mode 11 % above its oracle at nordic-wind).

What the sim sends (scenario `[market] feed = true`, spot markets only):
- a message at each 15-minute boundary, valid from that slot to the end of the last published delivery
  day: the end of today before `publish_hour_local` (13:00 in the site's zone), the end of tomorrow after;
  never past the simulated series (the MPC falls back to its learned profile beyond the validity, as in
  the field);
- import prices: the day-ahead price of each slot, exactly (it is the price the site pays);
- export prices: the site tariff's export price;
- grid CO2: the slot's true intensity times (1 + e), e a seeded forecast error with a relative standard
  deviation growing as sqrt(lead / 24 h) to `co2_forecast_sd` at a day's lead, correlated along the
  horizon (AR(1) over slots), redrawn for each message: the forecast a site would get, not the truth.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

STEP_S = 900                    # 15-minute slots, as the day-ahead market and the ledger
MINUTE_S = 60.0
FORECAST_AR = 0.95              # slot-to-slot correlation of the intensity forecast's error
CO2_MAX = 2.0                   # drivers/market.py's bound
CO2_FLOOR = 0.001


def slot_means(arr: np.ndarray, t0_s: float, valid_from_s: float, n: int, step_s: float = STEP_S) -> np.ndarray:
    """Mean of a per-minute series over each of `n` slots from `valid_from_s` (the run starts at `t0_s`);
    slots past the series' end repeat its last value (the caller keeps the validity inside the series)."""
    per = int(step_s // MINUTE_S)
    a0 = int((valid_from_s - t0_s) // MINUTE_S)
    idx = np.clip(a0 + np.arange(n * per), 0, len(arr) - 1)
    return np.asarray(arr, dtype=float)[idx].reshape(n, per).mean(axis=1)


class DayAheadFeed:
    """Builds the market message of any instant of a run, deterministically from (scenario, seed)."""

    def __init__(self, scn, series, seed: int):
        market = scn["market"]
        self.tz = ZoneInfo(scn.site["site"]["timezone"])
        self.publish_hour = float(market["publish_hour_local"])
        self.co2_sd = float(market["co2_forecast_sd"])
        self.export_price = float(scn.site["tariff"]["export_price_per_kwh"])
        self.series = series
        self.t0_s = scn.start.timestamp()
        self.end_s = self.t0_s + MINUTE_S * len(series.price_per_kwh)
        self.seed = int(seed)

    def horizon_end_s(self, now_s: float) -> float:
        """End of the last delivery day published by `now_s` (local midnight), inside the series."""
        local = datetime.fromtimestamp(now_s, self.tz)
        midnight = datetime(local.year, local.month, local.day, tzinfo=self.tz)
        days = 2 if local.hour + local.minute / 60.0 >= self.publish_hour else 1
        end = midnight + timedelta(days=days)           # wall-clock arithmetic: a DST day is 23 or 25 h
        return min(end.timestamp(), math.floor(self.end_s / STEP_S) * STEP_S)

    def message(self, now_s: float) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray] | None:
        """(valid_from, valid_until, import, export, co2) of the message received at `now_s`, or None
        when nothing of the series is left to publish."""
        valid_from = math.floor(now_s / STEP_S) * STEP_S
        valid_until = self.horizon_end_s(now_s)
        n = int(round((valid_until - valid_from) / STEP_S))
        if n < 1:
            return None
        s = self.series
        imp = slot_means(s.price_per_kwh, self.t0_s, valid_from, n)
        co2 = slot_means(s.co2_kg_per_kwh, self.t0_s, valid_from, n) * (1.0 + self.co2_error(valid_from, n))
        co2 = np.clip(co2, CO2_FLOOR, CO2_MAX)
        return valid_from, valid_until, imp, np.full(n, self.export_price), co2

    def co2_error(self, valid_from: float, n: int) -> np.ndarray:
        """The relative error of one message's intensity forecast over its n slots (see the docstring)."""
        if self.co2_sd <= 0.0:
            return np.zeros(n)
        rng = np.random.default_rng([self.seed, 7, int(valid_from // STEP_S)])
        z = rng.standard_normal(n)
        e = np.empty(n)
        e[0] = z[0]
        for k in range(1, n):
            e[k] = FORECAST_AR * e[k - 1] + math.sqrt(1.0 - FORECAST_AR ** 2) * z[k]
        lead_h = (np.arange(n) + 0.5) * STEP_S / 3600.0
        return self.co2_sd * np.sqrt(np.minimum(lead_h, 48.0) / 24.0) * e
