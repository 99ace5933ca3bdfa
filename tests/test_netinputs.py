"""Network inputs (issue 14): the market payload's decoder, the network-bus devices and the ages their
points carry into the process image, the compute age class, and the TOU table's local hour across DST."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest

from controller.config import load_site
from controller.core import layout as L
from controller.loop import ImageBuilder
from controller.netinputs import NetworkInputs
from controller.params import build_params, tz_transitions, utc_offset_s
from controller.points import (CATALOGUE, COMPUTE, INDEX, IT_KW, MKT_IMPORT, MKT_SLOTS, MKT_T0_S, MKT_T1_S,
                               Q_OK, Q_STALE, max_ages_s, new_image)
from drivers import market as MK

T0 = datetime(2026, 3, 28, 23, 0, tzinfo=timezone.utc).timestamp()     # local midnight in Stockholm, DST day


def iso(t):
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def market_msg(t0=T0, n=96, step_min=15, price=None, **over):
    d = {"v": 1, "t": iso(t0 - 3600), "valid_from": iso(t0), "valid_until": iso(t0 + n * step_min * 60),
         "step_min": step_min, "import_price_per_kwh": price or [0.1 + 0.001 * k for k in range(n)],
         "export_price_per_kwh": [0.01] * n, "co2_kg_per_kwh": [0.05] * n}
    d.update(over)
    return json.dumps({k: v for k, v in d.items() if v is not None}).encode()


# -- the market payload ----------------------------------------------------------------------------------
def test_market_decodes_15_min_with_negative_prices():
    prices = [0.08] * 40 + [-0.05] * 8 + [0.12] * 48
    f = MK.decode(market_msg(price=prices))
    assert f.n == 96 and f.step_s == 900.0 and f.valid_until_s == T0 + 86400
    assert f.import_price[40] == -0.05 and f.slot(T0 + 40 * 900 + 1) == 40 and f.slot(T0 + 86400) is None
    assert MK.decode(MK.encode(f)) == f
    h = MK.decode(market_msg(n=48, step_min=60, export_price_per_kwh=None, co2_kg_per_kwh=None))
    assert h.n == 48 and h.export_price is None and h.co2 is None


@pytest.mark.parametrize("over, key", [
    ({"step_min": 30}, "step_min"),
    ({"step_min": True}, "step_min"),
    ({"v": 2}, "v"),
    ({"valid_until": iso(T0)}, "valid_until"),                           # not after valid_from
    ({"valid_until": iso(T0 + 96 * 900 + 60)}, "valid_until"),          # not whole slots
    ({"valid_from": "2026-03-28T23:00:00"}, "valid_from"),              # no offset
    ({"t": 17}, "t"),
    ({"import_price_per_kwh": [0.1] * 95}, "import_price_per_kwh"),    # one short
    ({"import_price_per_kwh": [0.1] * 95 + ["0.1"]}, "import_price_per_kwh[95]"),
    ({"import_price_per_kwh": [0.1] * 95 + [1e9]}, "import_price_per_kwh[95]"),
    ({"co2_kg_per_kwh": [0.1] * 95 + [-0.1]}, "co2_kg_per_kwh[95]"),
    ({"export_price_per_kwh": "cheap"}, "export_price_per_kwh"),
    ({"import_price_per_kwh": None}, "import_price_per_kwh"),           # required
    ({"prices": []}, "prices"),                                          # a typo is named, not ignored
])
def test_market_bad_payload_names_the_key(over, key):
    with pytest.raises(MK.MarketPayloadError) as exc:
        MK.decode(market_msg(**over))
    assert f"key {key!r}" in str(exc.value)


def test_market_bounds_size_lengths_and_non_json():
    with pytest.raises(MK.MarketPayloadError, match="byte limit"):
        MK.decode(b" " * (MK.MAX_BYTES + 1))
    with pytest.raises(MK.MarketPayloadError, match="between|1..192|slots"):
        MK.decode(market_msg(n=193))
    assert MK.decode(market_msg(n=192)).n == 192
    with pytest.raises(MK.MarketPayloadError, match="not JSON"):
        MK.decode(market_msg().replace(b"0.1,", b"NaN,", 1))
    with pytest.raises(MK.MarketPayloadError, match="not JSON"):
        MK.decode(b"\xff\xfe")


# -- the devices and their ages --------------------------------------------------------------------------
def network_site(*roles, expected=False):
    cfg = load_site("nordic-wind")
    cfg["buses"]["net"] = {"kind": "network"}
    cfg["devices"] = [d for d in cfg["devices"] if d["role"] not in roles] + [
        {"name": f"net_{r}", "role": r, "profile": "", "bus": "net", "unit": 1, "simulated": False} for r in roles]
    cfg["market"]["expected"] = expected
    return cfg


class Clock:
    def __init__(self, utc):
        self.t = utc

    def utc(self):
        return self.t

    def mono(self):
        return self.t - T0 + 1000.0


def frozen(inputs, clock, cfg):
    """What the scan loop does: acquire every network device into an ImageBuilder, then freeze."""
    roles = {d["role"]: d["name"] for d in cfg["devices"] if d["bus"] == "net"}
    b = ImageBuilder(roles, cfg["limits"])
    img = new_image()
    for dev in inputs.devices().values():
        dev.acquire(clock.mono(), b.sink)
    return b, b.freeze(img, 0, clock.t, clock.mono())


def test_market_points_carry_the_feed_validity():
    cfg = network_site("market", "grid")
    clock = Clock(T0 + 600)
    inputs = NetworkInputs(cfg, utc=clock.utc, mono=clock.mono)
    assert set(inputs.devices()) == {"net_market", "net_grid"}
    b, img = frozen(inputs, clock, cfg)
    assert img["quality"][MKT_T0_S] == Q_STALE                  # nothing received: stale, like any device
    assert inputs.feed("market", market_msg(n=8), clock.t - 30)  # 2 h, received 30 s ago
    b, img = frozen(inputs, clock, cfg)
    v, q = img["value"], img["quality"]
    assert q[MKT_T0_S] == Q_OK and v[MKT_T0_S] == T0 and v[MKT_T1_S] == T0 + 7200
    assert q[MKT_IMPORT] == Q_OK and v[MKT_IMPORT:MKT_IMPORT + 8].tolist() == pytest.approx([0.1 + 0.001 * k for k in range(8)])
    assert v[INDEX["grid_price"]] == pytest.approx(0.1) and q[INDEX["grid_price"]] == Q_OK   # the slot of now
    # an hour later the window starts at the slot covering now (4 slots on)
    clock.t = T0 + 3600 + 10
    for dev in inputs.devices().values():
        dev.acquire(clock.mono(), b.sink)
    img = b.freeze(new_image(), 1, clock.t, clock.mono())
    assert img["value"][MKT_T0_S] == T0 + 4 * 900 and img["value"][MKT_IMPORT] == pytest.approx(0.104)
    # at valid_until the whole horizon goes stale at once (and the MPC falls back, see test_market_mpc)
    clock.t = T0 + 7200 + 1
    img = b.freeze(new_image(), 2, clock.t, clock.mono())
    assert img["quality"][MKT_T0_S] == Q_STALE and img["quality"][MKT_IMPORT] == Q_STALE
    assert img["quality"][MKT_T1_S] == Q_STALE


def test_market_goes_stale_with_the_message_age():
    cfg = network_site("market")
    cfg["limits"]["market_max_age_s"] = 3600.0
    clock = Clock(T0)
    inputs = NetworkInputs(cfg, utc=clock.utc, mono=clock.mono)
    inputs.feed("market", market_msg(), clock.t - 1800)           # valid 24 h, received 30 min ago
    b, img = frozen(inputs, clock, cfg)
    assert img["quality"][MKT_T1_S] == Q_OK
    clock.t = T0 + 1801                                            # 3601 s old: stale though still "valid"
    assert b.freeze(new_image(), 1, clock.t, clock.mono())["quality"][MKT_T1_S] == Q_STALE


def test_bad_and_older_messages_are_counted_not_raised():
    cfg = network_site("market", "compute", "weather", "grid")
    clock = Clock(T0)
    inputs = NetworkInputs(cfg, utc=clock.utc, mono=clock.mono)
    assert not inputs.feed("market", b'{"v":1}')
    assert not inputs.feed("market", b"\x00" * 10)
    assert not inputs.feed("compute/power", b'{"v":1}')
    assert not inputs.feed("weather_warning", b'{"kind":"sandstorm","from_s":1,"to_s":"x"}')
    assert not inputs.feed("nonsense", b"{}")
    assert inputs.feed("market", market_msg(t=iso(T0)))
    assert not inputs.feed("market", market_msg(t=iso(T0 - 60)))  # an older message does not win
    s = inputs.stats()
    assert s["market"]["errors"] == 3 and s["market"]["accepted"] == 1 and s["market"]["received"] == 4
    assert s["compute/power"]["errors"] == 1 and s["weather_warning"]["errors"] == 1
    assert "older than the one in force" in s["market"]["last_error"]


def test_compute_points_have_their_own_age_class():
    cfg = network_site("compute")
    ages = max_ages_s(cfg["limits"])
    assert CATALOGUE[IT_KW].age_class == COMPUTE and ages[IT_KW] == 180.0 >= 3 * 60.0
    assert ages[INDEX["grid_kw"]] == cfg["limits"]["meter_max_age_s"]     # the meters keep theirs
    clock = Clock(T0)
    inputs = NetworkInputs(cfg, utc=clock.utc, mono=clock.mono)
    assert inputs.feed("compute/power", json.dumps({"v": 1, "t": iso(T0 - 5), "total_kw": 71.4}).encode(),
                       clock.t - 2.0)
    b, img = frozen(inputs, clock, cfg)
    assert img["quality"][IT_KW] == Q_OK and img["value"][IT_KW] == 71.4
    clock.t = T0 + 60                                   # the bridge's documented period: still fresh
    assert b.freeze(new_image(), 1, clock.t, clock.mono())["quality"][IT_KW] == Q_OK
    clock.t = T0 + 177                                  # 179 s after it arrived (a queue's wait counts)
    assert b.freeze(new_image(), 2, clock.t, clock.mono())["quality"][IT_KW] == Q_OK
    clock.t = T0 + 179                                  # 181 s
    assert b.freeze(new_image(), 3, clock.t, clock.mono())["quality"][IT_KW] == Q_STALE


def test_weather_and_grid_update_commands_reach_the_image():
    cfg = network_site("weather", "grid")
    clock = Clock(T0)
    inputs = NetworkInputs(cfg, utc=clock.utc, mono=clock.mono)
    assert inputs.feed_command({"type": "weather_warning", "args": {"kind": "sandstorm", "from_s": T0 + 3600,
                                                                    "to_s": T0 + 7200, "severity": 4}})
    assert inputs.feed_command({"type": "grid_update", "args": {"valid_from_s": T0, "valid_to_s": T0 + 900,
                                                                "co2_kg_per_kwh": 0.61, "price_per_kwh": -0.02,
                                                                "outage_start_s": T0 + 600,
                                                                "outage_end_s": T0 + 4200}})
    b, img = frozen(inputs, clock, cfg)
    v, q = img["value"], img["quality"]
    assert v[INDEX["wx_pv_cut"]] == pytest.approx(0.8) and v[INDEX["wx_start_s"]] == T0 + 3600
    assert (v[INDEX["outage_start_s"]], v[INDEX["outage_end_s"]]) == (T0 + 600, T0 + 4200)
    assert v[INDEX["grid_price"]] == -0.02 and v[INDEX["grid_co2_kg_per_kwh"]] == 0.61
    assert q[INDEX["wx_pv_cut"]] == Q_OK and q[INDEX["outage_end_s"]] == Q_OK
    assert q[INDEX["grid_available"]] == Q_STALE        # not a network input: the grid meter's voltage is
    clock.t = T0 + 7201                                 # both windows over: "nothing announced"
    for dev in inputs.devices().values():
        dev.acquire(clock.mono(), b.sink)
    img = b.freeze(new_image(), 1, clock.t, clock.mono())
    assert img["value"][INDEX["wx_pv_cut"]] == 0.0 and img["value"][INDEX["outage_end_s"]] == 0.0


def test_simulated_and_field_devices_are_not_network_inputs():
    cfg = load_site("nordic-wind")              # compute / grid / weather simulated, on the sim bus
    assert NetworkInputs(cfg).devices() == {}


# -- DST -------------------------------------------------------------------------------------------------
def test_utc_offset_follows_stockholm_across_the_last_sunday_of_march():
    change = datetime(2026, 3, 29, 1, 0, tzinfo=timezone.utc).timestamp()   # 02:00 CET -> 03:00 CEST
    assert utc_offset_s("Europe/Stockholm", change - 1) == 3600.0
    assert utc_offset_s("Europe/Stockholm", change) == 7200.0
    off, changes = tz_transitions("Europe/Stockholm", T0)
    assert off == 3600.0 and changes[0] == (change, 7200.0)
    assert changes[1] == (datetime(2026, 10, 25, 1, 0, tzinfo=timezone.utc).timestamp(), 3600.0)
    assert tz_transitions("Asia/Shanghai", T0) == (28800.0, [])


def test_tou_local_hour_across_dst_in_the_plan():
    """A TOU table whose hour 3 (local) is expensive: on the DST Sunday local 03:00 comes at 01:00 UTC,
    on the day before at 02:00 UTC. The planner's price row follows (params built a day ahead)."""
    from controller.core.mpc_strategy import _tariff_mean, tz_offset_s
    cfg = load_site("nordic-wind")
    cfg["tariff"]["kind"] = "tou"
    cfg["tariff"]["import_price_per_kwh"] = [0.1] * 3 + [9.0] + [0.1] * 20
    p = build_params(cfg, "mpc", t_ref_s=T0 - 86400)              # the run started the day before
    assert p[L.P_TZ_TABLE] >= 2 and p[L.P_TZ_OFFSET_S] == 3600.0
    change = datetime(2026, 3, 29, 1, 0, tzinfo=timezone.utc).timestamp()
    assert tz_offset_s(p, change - 1) == 3600.0 and tz_offset_s(p, change) == 7200.0
    before = T0 - 86400 + 3 * 3600                    # 28 March 02:00 UTC = 03:00 CET
    assert _tariff_mean(p, before, before + 900) == 9.0
    assert _tariff_mean(p, T0 + 3600, T0 + 3600 + 900) == pytest.approx(0.1)           # 00:00 UTC = 01:00 CET
    assert _tariff_mean(p, change, change + 900) == 9.0                  # 01:00 UTC = 03:00 CEST (one offset: 02:00)
    assert _tariff_mean(p, change + 3600, change + 3600 + 900) == pytest.approx(0.1)
