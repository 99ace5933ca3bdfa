"""Fuzz: the payloads that arrive over MQTT - compute/power, compute/job (drivers/compute.py), the market
feed (drivers/market.py), weather warnings and grid updates (controller/netinputs.py) - and the
NetworkInputs entry point the uplink's thread calls.

Contract (docs/fuzzing.md):
- drivers.market.decode returns a MarketFeed (1..192 slots, every value finite and in range) or raises
  MarketPayloadError; drivers.compute.decode returns ITPower / JobAnnouncement (every kW finite) or
  raises ComputePayloadError; parse_weather / parse_grid_update return their record or raise
  NetPayloadError. Any other exception is a crash.
- NetworkInputs.feed (with the ledger's JobBook listening) never raises, and its refusal reason is the decoder's own (never the catch-all
  "TypeError: ..." that marks an exception a decoder let through); the devices' acquire after an
  accepted message never raises and sinks finite values only.
"""
from __future__ import annotations

import json
import math
import re

from hypothesis import example, given, strategies as st

import fuzz_harness as H
from controller import netinputs as N
from drivers import compute as C
from drivers import market as MK

T0 = 1_774_738_800.0          # 2026-03-28T23:00:00Z
ISO0 = "2026-03-28T23:00:00Z"


def _iso(t):
    from drivers.isotime import utc_iso
    return utc_iso(t)


def market_dict(n=8, step=15):
    return {"v": 1, "t": _iso(T0 - 3600), "valid_from": ISO0, "valid_until": _iso(T0 + n * step * 60),
            "step_min": step, "import_price_per_kwh": [0.1] * n, "export_price_per_kwh": [-0.01] * n,
            "co2_kg_per_kwh": [0.5] * n}


POWER = {"v": 1, "t": ISO0, "source": "kepler", "total_kw": 71.4, "cooling_kw": 6.1, "aux_kw": 1.2,
         "racks": {"r1": 36.0}, "nodes": {"gpu-01": 9.1}, "jobs": {"job-17": 20.3}}
JOB = {"v": 1, "id": "job-17", "kw": 20.0, "start": ISO0, "duration_min": 180, "deferrable": True,
       "deadline": "2026-03-29T20:00:00Z", "label": "rebuild", "node": "gpu-01", "state": "announced"}
WEATHER = {"kind": "sandstorm", "from_s": T0, "to_s": T0 + 3600, "severity": 4, "pv_cut_frac": 0.5, "ramp_s": 60}
GRID = {"valid_from_s": T0, "valid_to_s": T0 + 900, "price_per_kwh": 0.5, "co2_kg_per_kwh": 0.6,
        "outage_start_s": T0 + 100, "outage_end_s": T0 + 200}
SEEDS = {MK.KIND: market_dict(), C.POWER: POWER, C.JOB: JOB, N.WEATHER: WEATHER, N.GRID_UPDATE: GRID}
REFUSAL = {MK.KIND: MK.MarketPayloadError, C.POWER: C.ComputePayloadError, C.JOB: C.ComputePayloadError,
           N.WEATHER: N.NetPayloadError, N.GRID_UPDATE: N.NetPayloadError}


def decode(kind, payload):
    """The decoder of one kind, as the uplink reaches it through NetworkInputs.feed."""
    if kind == MK.KIND:
        return MK.decode(payload)
    if kind in C.INBOUND:
        return C.decode(kind, payload)
    return N.parse_weather(payload) if kind == N.WEATHER else N.parse_grid_update(payload)


def _finite_fields(obj):
    for v in vars(obj).values():
        if isinstance(v, float):
            assert math.isfinite(v), obj
        elif isinstance(v, tuple):
            assert all(math.isfinite(x) for x in v), obj
        elif isinstance(v, dict):
            assert all(math.isfinite(x) for x in v.values()), obj


@st.composite
def payloads(draw):
    """(kind, bytes): a valid message with some keys set to fuzzed values, keys dropped or added, or the
    bytes of one mutated, or junk."""
    kind = draw(st.sampled_from(sorted(SEEDS)))
    how = draw(st.sampled_from(("values", "values", "bytes", "junk", "deep")))
    if how == "deep":
        return kind, H.deep(draw(st.integers(10, 5000)), draw(st.sampled_from("[{")))
    if how == "junk":
        return kind, draw(st.one_of(st.binary(max_size=200), st.builds(H.dumps_loose, H.json_values)))
    d = json.loads(json.dumps(SEEDS[kind]))
    if how == "bytes":
        return kind, draw(H.mutated(json.dumps(d).encode()))
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.one_of(st.sampled_from(sorted(d) or ["v"]), st.text(max_size=10)))
        if draw(st.integers(0, 5)) == 0:
            d.pop(key, None)
        elif key in ("import_price_per_kwh", "export_price_per_kwh", "co2_kg_per_kwh") and draw(st.booleans()):
            arr = d[key] if isinstance(d.get(key), list) and d[key] else [0.1] * 8
            arr[draw(st.integers(0, len(arr) - 1))] = draw(H.json_values)
            d[key] = arr
        elif key in ("racks", "nodes", "jobs") and draw(st.booleans()):
            d[key] = {draw(st.text(max_size=200)): draw(H.json_values)}
        elif key in ("t", "valid_from", "valid_until", "start", "deadline") and draw(st.booleans()):
            d[key] = draw(H.times)
        else:
            d[key] = draw(H.json_values)
    return kind, H.dumps_loose(d)


@H.budget(ci=250, long=10000)
@given(payloads())
@example((MK.KIND, json.dumps({**market_dict(), "valid_from": "0001-01-01T00:00:00+01:00"}).encode()))
@example((MK.KIND, json.dumps({**market_dict(), "import_price_per_kwh": None}).encode()))
@example((C.POWER, json.dumps({**POWER, "t": "0001-01-01T00:00:00+01:00"}).encode()))
@example((C.POWER, H.deep(3000)))
@example((C.JOB, json.dumps({**JOB, "duration_min": 10 ** 400}).encode()))
@example((C.POWER, json.dumps({**POWER, "nodes": {"a": 1e308, "b": 1e308}, "total_kw": None}).encode()))
@example((C.POWER, json.dumps({**POWER, "v": {}}).encode()))
@example((N.WEATHER, json.dumps({**WEATHER, "from_s": 10 ** 400}).encode()))
@example((N.WEATHER, json.dumps({**WEATHER, "kind": []}).encode()))
def test_network_payload_decoders(kp):
    kind, payload = kp
    H.hit("netinputs.decoders")
    try:
        out = decode(kind, payload)
    except REFUSAL[kind] as exc:
        assert str(exc).startswith(kind.split("/")[0] if kind in C.INBOUND else kind) or kind in C.INBOUND, exc
        return
    _finite_fields(out)
    if kind == MK.KIND:
        assert 1 <= out.n <= MK.MAX_SLOTS and out.valid_from_s < out.valid_until_s


class _Clock:
    t = T0 + 60.0

    def utc(self):
        return self.t

    def mono(self):
        return self.t - T0


_CFG = None


def _inputs():
    """A fresh NetworkInputs (every network role on a network bus) per example: examples stay independent."""
    global _CFG
    if _CFG is None:
        from controller.config import load_site
        cfg = load_site("nordic-wind")
        cfg["buses"]["net"] = {"kind": "network"}
        cfg["devices"] = [d for d in cfg["devices"] if d["role"] not in N.NETWORK_ROLES] + [
            {"name": f"net_{r}", "role": r, "profile": "", "bus": "net", "unit": 1, "simulated": False}
            for r in N.NETWORK_ROLES]
        _CFG = cfg
    from controller.compute.jobs import JobBook
    clock, book = _Clock(), JobBook()
    return N.NetworkInputs(_CFG, listeners=[book], utc=clock.utc, mono=clock.mono), clock, book


@H.budget(ci=100, long=4000)
@given(st.lists(payloads(), min_size=1, max_size=4), st.floats(-1e6, 1e6))
@example([(MK.KIND, json.dumps({**market_dict(), "import_price_per_kwh": None}).encode())], 0.0)
def test_network_inputs_feed_and_acquire(msgs, dt):
    H.hit("netinputs.feed+acquire")
    inputs, clock, book = _inputs()
    for kind, payload in msgs:
        ok = inputs.feed(kind, payload)
        assert ok in (True, False)
        reason = inputs.stats()[kind]["last_error"]
        assert not re.match(rf"{re.escape(kind)}: [A-Z]\w*: ", reason), f"a decoder let an exception through: {reason}"
    clock.t = T0 + 60.0 + dt
    got = []
    for dev in inputs.devices().values():
        dev.acquire(clock.mono(), lambda name, point, v, t, q: got.append((point, v, t)))
    for point, v, t in got:
        assert math.isfinite(v) and math.isfinite(t), (point, v, t)
    book.power_at(clock.t)                   # the ledger's and the forecast's reads of what was announced
    book.forecast_arrays(clock.t)
