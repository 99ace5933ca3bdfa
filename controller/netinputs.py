"""Inputs that come over the network, as devices like any other: the compute platform, the market feed,
weather warnings and the utility's grid updates.

The site profile puts these on a ``kind = "network"`` bus; the runtime builds them here, not in
drivers/factory.py, because nothing is polled: the uplink delivers messages (``feed``, from its own
thread) and the scan cycle's acquire step reads the latest of each (``Device.acquire``). So they reach
the process image, and through it the step and the recording: ``edge-ems replay`` reproduces a plan
made with a market message without the message.

    inputs = NetworkInputs(cfg, listeners=[job_book])
    devices.update(inputs.devices())        # name -> Device, roles from the profile as for any device
    uplink.attach_inputs(inputs)            # MQTT compute/power, compute/job, market + verified commands

Ages. A measurement (compute/power) is stamped with the time its message arrived, so a silent bridge
goes stale by ``[limits] compute_max_age_s``. The market horizon is stamped so that it goes stale at
the message's ``valid_until`` or when the message is older than ``[limits] market_max_age_s``,
whichever comes first: the image's quality is the feed's validity, and the step's market_stale alarm
and the MPC's fallback to the profile's tariff read nothing else. Announcements (a job, a weather
warning, an announced outage, a grid update) are statements about a window: they are stamped "now"
while their window stands and read as 0 / 0 ("nothing announced") after it, as the simulator's devices
do. Grid availability is not a network input: the grid meter's voltage (grid_v) is the field truth.

A bad message never raises: it is counted per kind with its reason (``stats()``).
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass

from controller.points import DEFAULT_MAX_AGE_S, MARKET, MKT_SLOTS
from drivers import market as MK
from drivers.base import QUALITY_OK
from drivers.compute import INBOUND as COMPUTE_KINDS, ComputeTelemetry

WEATHER, GRID_UPDATE = "weather_warning", "grid_update"
KINDS = (*COMPUTE_KINDS, MK.KIND, WEATHER, GRID_UPDATE)
MAX_BYTES = MK.MAX_BYTES
NETWORK_ROLES = ("compute", "grid", "market", "weather")
# PV lost at full depth per warning kind, at severity 3 (scaled by severity / 3, at most 1), when the
# warning does not say (pv_cut_frac): a sandstorm's dust and a snow cover cut most of it.
PV_CUT = {"sandstorm": 0.6, "snow": 0.9, "storm": 0.4, "heat": 0.05, "cold": 0.0, "wind": 0.0}
# the market device's point names per series and slot (also the simulator's, tools/sim/devices.SimMarket)
MARKET_POINT_NAMES = {s: tuple(f"{s}_{k:02d}" for k in range(MKT_SLOTS)) for s in ("import", "export", "co2")}
_NAMES = MARKET_POINT_NAMES


class NetPayloadError(ValueError):
    pass


def _num(a: dict, key: str, lo: float, hi: float, kind: str) -> float:
    x = a.get(key)
    # an int is compared exactly (math.isfinite / float() of a 400-digit JSON integer raise OverflowError)
    if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and not math.isfinite(x)) \
            or not lo <= x <= hi:
        raise NetPayloadError(f"{kind}: key {key!r}: expected a finite number in {lo:g}..{hi:g}, got {str(x)[:40]}")
    return float(x)


def _args(kind: str, payload) -> dict:
    if not isinstance(payload, (bytes, bytearray, str)) or len(payload) > MAX_BYTES:
        raise NetPayloadError(f"{kind}: payload must be JSON bytes of at most {MAX_BYTES}")
    try:
        a = json.loads(payload, parse_constant=lambda c: float("nan"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise NetPayloadError(f"{kind}: payload is not JSON ({type(exc).__name__})") from None
    if not isinstance(a, dict):
        raise NetPayloadError(f"{kind}: payload must be a JSON object (the command's args)")
    return a


@dataclass
class Warning_:
    start_s: float
    end_s: float
    cut: float
    ramp_s: float
    grid_risk: float = 0.0   # probability the feeder trips during the event (docs/risk.md); 0: not said


def parse_weather(payload) -> Warning_:
    """A verified weather_warning command's args (controller/uplink/commands.py checked them too)."""
    a = _args(WEATHER, payload)
    if not isinstance(a.get("kind"), str) or a["kind"] not in PV_CUT:     # a list or object is unhashable
        raise NetPayloadError(f"{WEATHER}: key 'kind': expected one of {', '.join(PV_CUT)}, got {a.get('kind')!r:.30}")
    start, end = _num(a, "from_s", 0, 1e11, WEATHER), _num(a, "to_s", 0, 1e11, WEATHER)
    if end <= start:
        raise NetPayloadError(f"{WEATHER}: key 'to_s': must be after from_s")
    sev = _num(a, "severity", 1, 5, WEATHER) if "severity" in a else 3.0
    cut = _num(a, "pv_cut_frac", 0, 1, WEATHER) if "pv_cut_frac" in a else min(1.0, PV_CUT[a["kind"]] * sev / 3.0)
    ramp = _num(a, "ramp_s", 0, 86400, WEATHER) if "ramp_s" in a else 0.0
    risk = _num(a, "grid_risk", 0, 1, WEATHER) if "grid_risk" in a else 0.0
    return Warning_(start, end, cut, ramp, risk)


@dataclass
class GridUpdate:
    valid_from_s: float
    valid_to_s: float
    price: float | None = None
    co2: float | None = None
    cfe_pct: float | None = None    # the grid's carbon-free share, % (the ledger's 24/7 CFE)
    outage_start_s: float = 0.0
    outage_end_s: float = 0.0
    outage_grid_risk: float = 1.0   # probability the announced outage happens (docs/risk.md); 1: certain


def parse_grid_update(payload) -> GridUpdate:
    a = _args(GRID_UPDATE, payload)
    f, t = _num(a, "valid_from_s", 0, 1e11, GRID_UPDATE), _num(a, "valid_to_s", 0, 1e11, GRID_UPDATE)
    if t < f:
        raise NetPayloadError(f"{GRID_UPDATE}: key 'valid_to_s': must not be before valid_from_s")
    g = GridUpdate(f, t)
    if a.get("price_per_kwh") is not None:
        g.price = _num(a, "price_per_kwh", -MK.PRICE_ABS_MAX, MK.PRICE_ABS_MAX, GRID_UPDATE)
    if a.get("co2_kg_per_kwh") is not None:
        g.co2 = _num(a, "co2_kg_per_kwh", 0.0, MK.CO2_MAX, GRID_UPDATE)
    if a.get("cfe_pct") is not None:
        g.cfe_pct = _num(a, "cfe_pct", 0.0, 100.0, GRID_UPDATE)
    if "outage_start_s" in a or "outage_end_s" in a:
        g.outage_start_s = _num(a, "outage_start_s", 0, 1e11, GRID_UPDATE)
        g.outage_end_s = _num(a, "outage_end_s", g.outage_start_s, 1e11, GRID_UPDATE)
        if g.outage_end_s <= g.outage_start_s:
            raise NetPayloadError(f"{GRID_UPDATE}: key 'outage_end_s': must be after outage_start_s")
    if "grid_risk" in a:
        if "outage_start_s" not in a:
            raise NetPayloadError(f"{GRID_UPDATE}: key 'grid_risk': only with an outage (outage_start_s)")
        g.outage_grid_risk = _num(a, "grid_risk", 0, 1, GRID_UPDATE)
    return g


class _NetDevice:
    """A network input as a drivers.base.Device: nothing to poll, nothing to write."""

    kind = ""

    def __init__(self, name: str, inputs: "NetworkInputs"):
        self.name, self.inputs = name, inputs

    def actuate(self, commands: dict, now_mono_s: float) -> None:
        pass

    def close(self) -> None:
        pass


class MarketDevice(_NetDevice):
    """The market horizon as mkt_* points, windowed to start at the slot covering now (96 slots)."""

    kind = MARKET

    def __init__(self, name, inputs):
        super().__init__(name, inputs)
        self._sunk = None                  # (message seq, first slot, sink) last written: re-sink on change

    def acquire(self, now_mono_s: float, sink) -> None:
        inp = self.inputs
        with inp._lock:
            feed, recv, seq = inp.market, inp.market_recv_utc, inp.market_seq
        if feed is None:
            return
        utc = inp.utc()
        k0 = max(0, min(feed.n - 1, int((utc - feed.valid_from_s) // feed.step_s)))
        key = (seq, k0)
        if self._sunk is not None and self._sunk[0] == key and self._sunk[1] == sink:
            return                          # the builder holds these values and stamps already
        self._sunk = (key, sink)
        # stale at valid_until or at the message's max age, whichever first (see the module docstring)
        stamp = min(now_mono_s - max(0.0, utc - recv), now_mono_s + (feed.valid_until_s - utc) - inp.market_max_age_s)
        name = self.name
        series = 1 | (2 if feed.export_price is not None else 0) | (4 if feed.co2 is not None else 0)
        for point, v in (("t0_s", feed.valid_from_s + k0 * feed.step_s), ("valid_until_s", feed.valid_until_s),
                         ("step_s", feed.step_s), ("series", float(series))):
            sink(name, point, v, stamp, QUALITY_OK)
        for s, arr in (("import", feed.import_price), ("export", feed.export_price), ("co2", feed.co2)):
            if arr is None:
                continue
            names = _NAMES[s]
            for k in range(min(MKT_SLOTS, feed.n - k0)):
                sink(name, names[k], arr[k0 + k], stamp, QUALITY_OK)


class GridDevice(_NetDevice):
    """The utility side: the current price, intensity and carbon-free share (a grid update covering now,
    else the market feed's slot) and an announced outage. Not availability: that is the grid meter's voltage."""

    kind = "grid"

    def acquire(self, now_mono_s: float, sink) -> None:
        inp = self.inputs
        utc = inp.utc()
        with inp._lock:
            g, feed = inp.grid_update, inp.market
            fresh = feed is not None and utc - inp.market_recv_utc <= inp.market_max_age_s
        price = co2 = cfe = None
        if feed is not None and fresh:
            k = feed.slot(utc)
            if k is not None:
                price = feed.import_price[k]
                co2 = feed.co2[k] if feed.co2 is not None else None
                cfe = feed.cfe_pct[k] if feed.cfe_pct is not None else None
        o_s = o_e = 0.0
        o_risk = 1.0
        if g is not None and g.valid_from_s <= utc < g.valid_to_s:
            price = g.price if g.price is not None else price
            co2 = g.co2 if g.co2 is not None else co2
            cfe = g.cfe_pct if g.cfe_pct is not None else cfe
        if g is not None and g.outage_end_s > utc:
            o_s, o_e, o_risk = g.outage_start_s, g.outage_end_s, g.outage_grid_risk
        name = self.name
        if price is not None:
            sink(name, "price_per_kwh", price, now_mono_s, QUALITY_OK)
        if co2 is not None:
            sink(name, "co2_kg_per_kwh", co2, now_mono_s, QUALITY_OK)
        if cfe is not None:
            sink(name, "cfe_pct", cfe, now_mono_s, QUALITY_OK)
        sink(name, "outage_start_s", o_s, now_mono_s, QUALITY_OK)
        sink(name, "outage_end_s", o_e, now_mono_s, QUALITY_OK)
        sink(name, "outage_grid_risk", o_risk, now_mono_s, QUALITY_OK)


class WeatherDevice(_NetDevice):
    """The latest weather warning until it ends, then 0 / 0."""

    kind = "weather"

    def acquire(self, now_mono_s: float, sink) -> None:
        inp = self.inputs
        with inp._lock:
            w = inp.weather
        if w is not None and w.end_s <= inp.utc():
            w = None
        vals = (w.cut, w.start_s, w.end_s, w.ramp_s, w.grid_risk) if w is not None else (0.0,) * 5
        for point, v in zip(("pv_cut_frac", "warn_start_s", "warn_end_s", "warn_ramp_s", "grid_risk"), vals):
            sink(self.name, point, v, now_mono_s, QUALITY_OK)


_DEVICE_BY_ROLE = {"grid": GridDevice, "market": MarketDevice, "weather": WeatherDevice}


class NetworkInputs:
    """The network-bus devices of a site profile and the one entry point the uplink feeds."""

    def __init__(self, cfg, listeners=(), utc=time.time, mono=time.monotonic):
        self.utc, self.mono = utc, mono
        limits = cfg.get("limits") or {}
        self.market_max_age_s = float(limits.get("market_max_age_s", DEFAULT_MAX_AGE_S[MARKET]))
        self._lock = threading.Lock()
        self.market: MK.MarketFeed | None = None
        self.market_recv_utc = -math.inf
        self.market_seq = 0
        self.weather: Warning_ | None = None
        self.grid_update: GridUpdate | None = None
        self._stats = {k: {"received": 0, "accepted": 0, "errors": 0, "last_error": "", "last_utc": None}
                       for k in KINDS}
        network = {name for name, bus in (cfg.get("buses") or {}).items() if bus.get("kind") == "network"}
        self._devices: dict = {}
        self.compute: ComputeTelemetry | None = None
        for dev in cfg.get("devices") or ():
            if dev["bus"] not in network or dev.get("simulated") or dev["role"] not in NETWORK_ROLES:
                continue
            if dev["role"] == "compute":
                d = ComputeTelemetry(dev["name"], listeners=listeners, utc=utc, mono=mono)
                self.compute = self.compute or d
            else:
                d = _DEVICE_BY_ROLE[dev["role"]](dev["name"], self)
            self._devices[dev["name"]] = d
        # without a compute device on the profile, messages still keep a job book current (the ledger's)
        self._compute = self.compute or ComputeTelemetry("compute", listeners=listeners, utc=utc, mono=mono)

    def devices(self) -> dict:
        return dict(self._devices)

    def feed(self, kind: str, payload, recv_t_utc_s: float | None = None) -> bool:
        """One message from the uplink's thread; True when accepted. Never raises for its content."""
        recv = self.utc() if recv_t_utc_s is None else float(recv_t_utc_s)
        st = self._stats.get(kind)
        if st is None:
            return False
        try:
            ok, reason = self._feed(kind, payload, recv)
        except (MK.MarketPayloadError, NetPayloadError) as exc:
            ok, reason = False, str(exc)
        except Exception as exc:            # a decoder bug must not reach the uplink's thread either
            ok, reason = False, f"{kind}: {type(exc).__name__}: {str(exc)[:120]}"
        with self._lock:
            st["received"] += 1
            st["last_utc"] = recv
            if ok:
                st["accepted"] += 1
            else:
                st["errors"] += 1
                st["last_error"] = reason
        return ok

    def _feed(self, kind: str, payload, recv: float) -> tuple[bool, str]:
        if kind in COMPUTE_KINDS:
            c = self._compute
            ok = c.feed(kind, payload, recv)
            return ok, "" if ok else c.last_error
        if kind == MK.KIND:
            feed = MK.decode(payload)
            with self._lock:
                if self.market is not None and feed.t_s < self.market.t_s:
                    return False, f"market: message of {feed.t_s:.0f} is older than the one in force"
                self.market, self.market_recv_utc = feed, recv
                self.market_seq += 1
            return True, ""
        if kind == WEATHER:
            w = parse_weather(payload)
            with self._lock:
                self.weather = w
            return True, ""
        g = parse_grid_update(payload)
        with self._lock:
            self.grid_update = g
        return True, ""

    def feed_command(self, cmd: dict, t_utc_s: float | None = None) -> bool:
        """A verified cloud command of type weather_warning or grid_update (controller/uplink/hook.py)."""
        if cmd.get("type") not in (WEATHER, GRID_UPDATE):
            return False
        return self.feed(cmd["type"], json.dumps(cmd.get("args", {})).encode(), t_utc_s)

    def stats(self) -> dict:
        with self._lock:
            out = {k: dict(v) for k, v in self._stats.items()}
            m = self.market
            out["market_in_force"] = None if m is None else {
                "valid_from_s": m.valid_from_s, "valid_until_s": m.valid_until_s, "step_s": m.step_s, "slots": m.n,
                "age_s": round(self.utc() - self.market_recv_utc, 1)}
        out["compute_errors"] = self._compute.errors
        return out
