"""The grid's carbon-free share, hour by hour (issue 17): pushed by the cloud (a grid update's or the market
feed's `cfe_pct`), it reaches the process image as `grid_cfe_pct` and the ledger counts each grid kWh at the
share of the cycle it was drawn in, so a load moved to a windy hour raises the 24/7 CFE; without a fresh
share the profile's static `[carbon] grid_cfe_pct` counts, as before. Figures worked out by hand."""
# (tests/test_netinputs.py and test_uplink_commands.py lend their message builders)
from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest

from controller.carbon.hook import make_carbon_hook
from controller.carbon.ledger import verify
from controller.carbon.report import build_report
from controller.netinputs import NetworkInputs
from controller.points import INDEX, Q_OK, Q_STALE, new_image
from controller.netinputs import NetPayloadError, parse_grid_update
from controller.uplink.commands import sign_command
from drivers import market as MK
from test_carbon_handcheck import CFG, FakeLoop, image
from test_netinputs import T0 as T_DST, Clock, frozen, market_msg, network_site
from test_uplink_commands import KEY, NOW, cmd, verifier

T0 = 1767225600.0          # 2026-01-01T00:00:00Z
CARBON = {"residual_mix_kg_per_kwh": 0.8, "battery_initial_kg_per_kwh": 0.5, "contracts": [], "grid_cfe_pct": 10.0}
CFE = INDEX["grid_cfe_pct"]


def _interval(hook, t_start, cfe_of_minute, **kw):
    """15 one-minute images closing one interval; cfe_of_minute(i) is the pushed share or None (stale)."""
    for i in range(1, 16):
        cfe = cfe_of_minute(i)
        hook(FakeLoop, image(t_start + 60.0 * i, **kw, **({} if cfe is None else {"grid_cfe_pct": cfe})), None, None, 0)


@pytest.fixture()
def records(tmp_path):
    hook = make_carbon_hook(CFG, tmp_path / "ledger", tmp_path / "gw.key", carbon=CARBON,
                            clock_status=lambda: "synchronised")
    hook(FakeLoop, image(T0, grid_kw=60.0), None, None, 0)
    # loads 60 kW (IT 50, cooling 6, aux 4) all from the grid: 15 kWh an interval
    _interval(hook, T0, lambda i: 90.0, grid_kw=60.0)                             # a windy hour
    _interval(hook, T0 + 900, lambda i: None, grid_kw=60.0)                       # nothing pushed: static 10 %
    _interval(hook, T0 + 1800, lambda i: 80.0 if i <= 5 else 20.0, grid_kw=60.0)  # the wind drops at minute 5
    # 00:45 grid 80: loads 60 + battery charge 20 at 50 % carbon-free
    _interval(hook, T0 + 2700, lambda i: 50.0, grid_kw=80.0, battery_kw=-20.0)
    hook.close()
    res = verify(tmp_path / "ledger", keep=True)
    assert res.ok, res.message
    return [p for p in res.payloads if p["kind"] == "interval"]


def test_each_grid_kwh_counts_the_share_of_its_cycle(records):
    a, b, c, d = records
    assert a["cfe"]["grid_kwh"] == pytest.approx(15.0 * 0.9) and a["cfe"]["grid_pushed_s"] == 900.0
    assert b["cfe"]["grid_kwh"] == pytest.approx(15.0 * 0.1) and b["cfe"]["grid_pushed_s"] == 0.0
    # 5 min at 80 %, 10 min at 20 %: 5 kWh x 0.8 + 10 kWh x 0.2
    assert c["cfe"]["grid_kwh"] == pytest.approx(5.0 * 0.8 + 10.0 * 0.2)
    assert d["cfe"]["grid_kwh"] == pytest.approx(15.0 * 0.5)
    # the charge's clean kWh join the pool (5 kWh x 0.5 x eta 0.96), to be drawn at that share later
    assert d["pool"]["cfe_kwh"] - d["pool_start"]["cfe_kwh"] == pytest.approx(5.0 * 0.5 * 0.96)
    # the hour's 24/7 CFE: (13.5 + 1.5 + 6 + 7.5) / 60 kWh
    rep = build_report(records)
    assert rep["total"]["kpi"]["cfe_pct"] == pytest.approx(100 * 28.5 / 60, abs=0.01)


def test_the_same_load_an_hour_later_is_cleaner_when_the_share_is(tmp_path):
    """A 30 kW batch moved from a 20 % hour to an 85 % hour: same energy, more carbon-free kWh."""
    def cfe_kwh(batch_hour, tmp):
        hook = make_carbon_hook(CFG, tmp / f"l{batch_hour}", tmp / f"k{batch_hour}", carbon=CARBON,
                                clock_status=lambda: "synchronised")
        hook(FakeLoop, image(T0, grid_kw=60.0), None, None, 0)
        for q in range(8):                   # two hours: 20 % then 85 %
            hour = q // 4
            extra = 30.0 if hour == batch_hour else 0.0
            _interval(hook, T0 + 900 * q, lambda i, h=hour: (20.0, 85.0)[h], grid_kw=60.0 + extra,
                      it_kw=50.0 + extra)
        hook.close()
        ivs = [p for p in verify(tmp / f"l{batch_hour}", keep=True).payloads if p["kind"] == "interval"]
        return sum(p["cfe"]["grid_kwh"] for p in ivs), sum(p["cfe"]["load_kwh"] for p in ivs)
    early, load_early = cfe_kwh(0, tmp_path)
    late, load_late = cfe_kwh(1, tmp_path)
    assert load_early == pytest.approx(load_late) == pytest.approx(2 * 60.0 + 30.0)
    assert late - early == pytest.approx(30.0 * (0.85 - 0.20))


# -- how the share reaches the image ---------------------------------------------------------------------
def test_a_grid_update_and_the_market_feed_push_the_share():
    cfg = network_site("market", "grid")
    clock = Clock(T_DST + 600)
    inputs = NetworkInputs(cfg, utc=clock.utc, mono=clock.mono)
    _, img = frozen(inputs, clock, cfg)
    assert img["quality"][CFE] == Q_STALE                      # nothing pushed: the ledger's static share
    cfe = [60.0 + k for k in range(8)]
    assert inputs.feed("market", market_msg(n=8, cfe_pct=cfe), clock.t - 30)
    b, img = frozen(inputs, clock, cfg)
    assert img["quality"][CFE] == Q_OK and img["value"][CFE] == 60.0        # the slot covering now
    assert inputs.feed_command({"type": "grid_update", "args": {"valid_from_s": T_DST, "valid_to_s": T_DST + 900,
                                                                "cfe_pct": 97.5}})
    for dev in inputs.devices().values():
        dev.acquire(clock.mono(), b.sink)
    assert b.freeze(new_image(), 1, clock.t, clock.mono())["value"][CFE] == 97.5   # the update wins
    clock.t = T_DST + 900 + 60                                 # the update over: the feed's slot 1 again
    for dev in inputs.devices().values():
        dev.acquire(clock.mono(), b.sink)
    assert b.freeze(new_image(), 2, clock.t, clock.mono())["value"][CFE] == 61.0


@pytest.mark.parametrize("bad", [100.5, -1.0, "97", True, None])
def test_a_share_out_of_0_to_100_is_refused_naming_the_key(bad):
    if bad is not None:
        with pytest.raises(MK.MarketPayloadError, match=r"'cfe_pct\[2\]'.*0\.\.100"):
            MK.decode(market_msg(n=4, cfe_pct=[50.0, 50.0, bad, 50.0]))
    with pytest.raises(MK.MarketPayloadError, match="'cfe_pct': expected 4 values"):
        MK.decode(market_msg(n=4, cfe_pct=[50.0] * 3))
    if bad is None:
        return
    args = {"valid_from_s": NOW, "valid_to_s": NOW + 900, "cfe_pct": bad}
    with pytest.raises(NetPayloadError, match="grid_update: key 'cfe_pct'"):
        parse_grid_update(json.dumps(args))
    v, _ = verifier()                                   # a signed command from the cloud: refused, not applied
    verdict = v.verify(sign_command(KEY, cmd(1, "grid_update", args)), NOW)
    assert not verdict.accepted and "cfe_pct" in verdict.reason
    assert v.verify(sign_command(KEY, cmd(2, "grid_update", {**args, "cfe_pct": 97.5})), NOW).accepted


def test_the_feed_round_trips_its_share():
    f = MK.decode(market_msg(n=4, cfe_pct=[0.0, 33.3, 99.9, 100]))
    assert f.cfe_pct == (0.0, 33.3, 99.9, 100.0) and MK.decode(MK.encode(f)) == f
    assert json.loads(MK.encode(f))["cfe_pct"][3] == 100.0
    assert MK.decode(market_msg(n=4)).cfe_pct is None


# -- the simulator pushes its grid's share; the gateway's ledger and the simulator's meters agree ----------
def test_a_simulated_spot_grid_pushes_its_share_and_the_ledger_counts_it(tmp_path):
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    res = run_sim(load_scenario("nordic-wind"), hours=6.0, seed=1, out_dir=tmp_path)
    k = res.kpis
    assert k["cfe_share"] is not None and 0.5 < k["cfe_share"] < 0.9          # 1 - (0.08..0.2) / 0.5
    ivs = [p for p in verify(tmp_path / "ledger", keep=True).payloads if p["kind"] == "interval"]
    full = [p for p in ivs if not p["partial"]]
    # every importing second rested on the pushed share, as on the pushed intensity
    assert full and all(p["cfe"]["grid_pushed_s"] == p["grid_factor"]["pushed_s"] for p in full)
    assert sum(p["cfe"]["grid_pushed_s"] for p in full) > 0.0 and all(p["grid_factor"]["profile_s"] == 0.0 for p in full)
    # the scenario's grid is a two-part mix, share = 1 - intensity / 0.5: inside an hour both are constant,
    # so each interval's carbon-free share of its grid kWh to the loads follows its pushed intensity
    shares = []
    for p in full:
        grid_to_loads = p["energy_kwh"]["to_loads"]["grid"]
        if grid_to_loads > 1.0:
            shares.append(p["cfe"]["grid_kwh"] / grid_to_loads)
            assert shares[-1] == pytest.approx(1.0 - p["grid_factor"]["mean_kg_per_kwh"] / 0.5, abs=1e-3)
    assert len(shares) >= 2 and max(shares) - min(shares) > 0.01            # it varies by the hour
    flat = run_sim(load_scenario("gansu-edge"), hours=0.5, seed=1, out_dir=tmp_path / "flat").kpis
    assert flat["cfe_share"] is None                           # a flat tariff pushes no share


def test_the_technician_and_the_dcim_see_the_share_the_ledger_counts():
    """The TUI's carbon screen and the DCIM block show the grid's carbon-free share in force: the pushed one
    while fresh, else it says none is pushed (TUI) / the profile's share with source 0 (DCIM)."""
    from types import SimpleNamespace

    from controller.carbon.account import EnergyAccount
    from controller.config import load_site
    from controller.core import layout as L
    from controller.dcim.block import BlockBuilder, Headroom
    from controller.dcim.regmap import decode, load_map
    from controller.params import build_params
    from controller.tui.screens import carbon

    def screen(points):
        return carbon({}, {"points": points, "carbon": {}}, None, True).plain
    assert re.search(r"carbon-free\s+62\.5 %", screen({"grid_cfe_pct": [62.5, 0], "grid_co2_kg_per_kwh": [0.1, 0]}))
    assert "carbon-free - (none pushed)" in screen({"grid_cfe_pct": [62.5, 1]})

    cfg = load_site("nordic-wind")
    cfg["carbon"] = {**cfg.get("carbon", {}), "grid_cfe_pct": 40.0}
    rmap = load_map()
    regs = {r.name: r for r in rmap.registers}
    img = new_image()
    img["t_s"] = 1.7e9
    b = BlockBuilder(rmap, writes_enabled=False, account=EnergyAccount(cfg), alarms=None, headroom=Headroom())
    loop = SimpleNamespace(params=build_params(cfg, None, t_ref_s=1.7e9), state=L.new_state(1.7e9), period_s=1.0)

    def read(name):
        r = regs[name]
        words = struct.unpack(f">{rmap.size}H", b.build(loop, img, np.zeros(L.N_COMMANDS))[0])
        return decode(r, list(words[r.address:r.address + r.words]))
    img["value"][CFE], img["quality"][CFE] = 73.4, Q_OK
    assert read("grid_cfe") == pytest.approx(73.4) and read("grid_cfe_source") == 1
    img["quality"][CFE] = Q_STALE
    assert read("grid_cfe") == pytest.approx(40.0) and read("grid_cfe_source") == 0
