"""One energy account: the ledger's interval, the uplink's provisional interval and the TUI's "today" agree
over a run with a stall and clock jumps (each beyond one of the old three gap rules), and one shared
account integrates each image once for all three readers."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from controller.carbon.hook import make_carbon_hook
from controller.carbon.ledger import parse_line
from controller.config import load_site
from controller.core import layout as L
from controller.ipc import IpcServer
from controller.points import INDEX, Q_OK, new_image
from controller.uplink import make_uplink_hook
from controller.uplink.topics import INTERVAL

NO_EVENTS = np.zeros((0, 2))
T0 = 1_780_000_500.0        # 5 min into a 15-min interval, early morning local time (UTC+8)
KEYS = [("grid_import_kwh", "grid_import_kwh"), ("grid_export_kwh", "grid_export_kwh"), ("pv_kwh", "pv_kwh"),
        ("battery_charge_kwh", "battery_charge_kwh"), ("battery_discharge_kwh", "battery_discharge_kwh"),
        ("it_kwh", "it_kwh"), ("load_kwh", "load_kwh")]


def _times():
    """1 s cycles with: a 30 s stall (under the ledger's 60 s rule, over the uplink's old 10 s clamp), a 45 s
    stall, a 300 s clock step forward (beyond every rule) and a 20 s step back; across two interval ends."""
    t, out = T0, []
    for n, gap in ((200, 30.0), (150, 45.0), (100, 300.0), (120, -20.0), (400, None)):
        for _ in range(n):
            t += 1.0
            out.append(t)
        if gap is not None:
            t += gap
    return out


def _image(i: int, t: float) -> np.ndarray:
    """A balanced AC bus (grid + PV + battery = IT + cooling + aux) whose PV ramps, with the PV meter stale
    for a while (the ledger fills it in from the balance; the old TUI integrator dropped it)."""
    img = new_image()
    img["cycle"] = i
    img["t_s"] = t
    v = img["value"]
    pv = 20.0 + 0.05 * (i % 300)
    it, cool, aux = 60.0, 8.0, 2.0
    bat = -10.0 if i < 500 else 15.0
    for name, x in (("pv_kw", pv), ("pv_available_kw", pv), ("battery_kw", bat), ("genset_kw", 0.0),
                    ("it_kw", it), ("cooling_kw", cool), ("aux_kw", aux), ("grid_kw", it + cool + aux - pv - bat),
                    ("grid_co2_kg_per_kwh", 0.8), ("soc_pct", 50.0), ("genset_running", 0.0)):
        v[INDEX[name]] = x
        img["quality"][INDEX[name]] = Q_OK
    if 250 <= i < 300:
        img["quality"][INDEX["pv_kw"]] = 2       # the PV meter silent
    return img


class _Loop:
    """What the three hooks read of the scan loop when no TUI client is attached: its period."""

    def __init__(self, period_s: float):
        self.period_s = period_s
        self.devices = {}


def _run(tmp_path, shared: bool):
    cfg = load_site("inner-mongolia-mine")
    account = None
    kw = {}
    if shared:
        from controller.carbon.account import EnergyAccount
        account = EnergyAccount(cfg)
        kw = {"account": account}
    carbon = make_carbon_hook(cfg, tmp_path / "ledger", tmp_path / "gateway.key", clock_status=lambda: "test", **kw)
    uhook, up = make_uplink_hook(cfg, None, tmp_path / "uplink", clock_status="test", **kw)
    ipc = IpcServer(cfg, tmp_path / "ipc.sock", **kw)
    loop = _Loop(float(cfg["control"]["period_s"]))
    cmd = np.zeros(L.N_COMMANDS)
    for i, t in enumerate(_times()):
        img = _image(i, t)
        for hook in (carbon, uhook, ipc.hook):          # the runtime's slot order
            hook(loop, img, cmd, NO_EVENTS, 0)
    today = dict(ipc.today)
    carbon.close()                                       # the interval in progress: written, partial
    assert up.spool.flush()
    provisional = [json.loads(p)["body"] for _s, p in up.spool.pending(INTERVAL, 0, 100)]
    up.close()
    ledger = [parse_line(line.rstrip(b"\n"))[0] for line in open(tmp_path / "ledger", "rb")]
    ledger = [p for p in ledger if p.get("kind") == "interval"]
    return today, provisional, ledger, account


def _ledger_fig(p: dict) -> dict:
    src, snk = p["energy_kwh"]["sources"], p["energy_kwh"]["sinks"]
    return {"grid_import_kwh": src["grid"], "grid_export_kwh": snk["export"], "pv_kwh": src["pv"],
            "battery_charge_kwh": snk["battery_charge"], "battery_discharge_kwh": src["battery_discharge"],
            "it_kwh": snk["it"], "load_kwh": snk["it"] + snk["cooling"] + snk["aux"], "covered_s": p["covered_s"]}


@pytest.mark.parametrize("shared", [False, True], ids=["each-own-account", "one-shared-account"])
def test_ledger_uplink_and_today_agree_across_stalls_and_clock_jumps(tmp_path, shared):
    today, provisional, ledger, account = _run(tmp_path, shared)
    assert len(ledger) >= 2, ledger
    closed = ledger[:-1]                                  # the last one is the partial written at close
    assert len(provisional) == len(closed), (provisional, closed)
    for prov, led in zip(provisional, closed):
        fig = _ledger_fig(led)
        for key, _ in KEYS:
            assert prov[key] == pytest.approx(fig[key], abs=2e-6), (key, prov, fig)
        assert prov["covered_s"] == pytest.approx(fig["covered_s"], abs=1e-3)
    # the TUI's today: the same local day holds all these intervals, so it is their sum
    for key, _ in KEYS:
        total = sum(_ledger_fig(p)[key] for p in ledger)
        assert today[key] == pytest.approx(total, abs=1e-5), (key, today, total)
    covered = sum(p["covered_s"] for p in ledger)
    assert today["covered_s"] == pytest.approx(covered, abs=1e-3)
    # the gaps were not integrated: 30 s and 45 s stalls are under the 60 s rule, the 300 s step is not,
    # the step back lands in time already accounted
    # (969 spans: 965 of 1 s, 31 s and 46 s integrated; 301 s and -19 s not)
    assert covered == pytest.approx(965.0 + 31.0 + 46.0, abs=1e-3)
    if shared:
        assert account.gaps == 2                          # the forward step and the step back, counted once


def test_one_shared_account_integrates_each_image_once(tmp_path):
    """Three readers of one account: the figures are those of an account fed once per image."""
    from controller.carbon.account import EnergyAccount
    cfg = load_site("inner-mongolia-mine")
    alone = EnergyAccount(cfg)
    times = _times()[:700]
    for i, t in enumerate(times):
        alone.update(_image(i, t), float(cfg["control"]["period_s"]))
    shared = EnergyAccount(cfg)
    loop = _Loop(float(cfg["control"]["period_s"]))
    ipc = IpcServer(cfg, tmp_path / "ipc.sock", account=shared)
    uhook, up = make_uplink_hook(cfg, None, tmp_path / "uplink", clock_status="test", account=shared)
    try:
        for i, t in enumerate(times):
            img = _image(i, t)
            uhook(loop, img, np.zeros(L.N_COMMANDS), NO_EVENTS, 0)
            ipc.hook(loop, img, np.zeros(L.N_COMMANDS), NO_EVENTS, 0)
    finally:
        up.close()
    assert shared.today() == alone.today()
    assert ipc.today == alone.today()
