"""The DCIM register map as data: it loads, its codes are the controller's, docs/dcim.md carries exactly its
table, the per-cycle block encodes every entry as the reference encoder does (not-available patterns,
saturation, word order), the [dcim] table is validated, and the write gate bounds what a peer can audit."""
from __future__ import annotations

import math
import struct
import subprocess
import sys
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from controller.core import layout as L
from controller.dcim.regmap import MAP_PATH, MapError, decode, encode, load_map, markdown
from controller.points import CATALOGUE, INDEX, Q_OK, Q_STALE, new_image

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "dcim.md"
BEGIN, END = "<!-- registers:begin (python -m controller.dcim.regmap --markdown) -->", "<!-- registers:end -->"


@pytest.fixture(scope="module")
def rmap():
    return load_map()


def test_the_doc_table_is_the_map(rmap):
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert table == markdown(rmap), "docs/dcim.md is out of date: python -m controller.dcim.regmap --markdown"


def test_codes_are_the_controllers(rmap):
    from controller.operator import MODES
    assert list(rmap.by_name("alarms_active").bits) == L.ALARM_NAMES
    assert list(rmap.by_name("alarms_unacked").bits) == L.ALARM_NAMES
    assert list(rmap.by_name("mode").codes) == list(L.MODE_NAMES)
    assert list(rmap.by_name("charge_limit_reason").codes) == L.LIMIT_REASONS
    assert list(rmap.by_name("discharge_limit_reason").codes) == L.LIMIT_REASONS
    assert list(rmap.by_name("strategy").codes) == [L.STRATEGY_NAMES[i] for i in range(3)]
    assert list(rmap.by_name("mode_request").codes) == sorted(MODES, key=MODES.get)
    assert rmap.by_name("map_version").ref == str(rmap.version)
    from controller.uplink.commands import MODES as CLOUD_MODES
    assert set(rmap.by_name("mode_request").codes) == set(CLOUD_MODES)


def test_required_contents(rmap):
    names = {r.name for r in rmap.registers}
    for need in ("pv_kw", "battery_kw", "grid_kw", "genset_kw", "load_kw", "compute_kw", "soc", "soh",
                 "alarms_active", "headroom_now_kw", "headroom_state", "interval_intensity",
                 "interval_renewable_share", "mode", "reserve", "charge_max_kw", "heartbeat", "data_age",
                 "not_available_count", "mode_request", "reserve_request", "battery_setpoint_request"):
        assert need in names
    assert [r.write for r in rmap.registers if r.writable] == ["mode", "reserve_soc", "battery_kw"]
    starts = [a for a, _ in rmap.ranges()]
    assert all(n <= 100 for _, n in rmap.ranges()) and starts == sorted(starts)


def test_encode_decode_reference():
    reg = lambda typ, scale=1.0: SimpleNamespace(type=typ, scale=scale)     # noqa: E731
    assert encode(reg("float32"), 1.5) == [0x3FC0, 0x0000]                 # big-endian, high word first
    assert encode(reg("float32"), None) == [0x7FC0, 0x0000] and encode(reg("float32"), math.nan) == [0x7FC0, 0]
    assert encode(reg("uint16", 10), 54.06) == [541] and encode(reg("uint16", 10), None) == [0xFFFF]
    assert encode(reg("uint16", 10), -3) == [0] and encode(reg("uint16"), 1e9) == [0xFFFE]   # saturates
    assert encode(reg("int16", 10), -12.5) == [0x10000 - 125] and encode(reg("int16"), None) == [0x8000]
    assert encode(reg("int16"), -1e9) == [0x8001]
    assert encode(reg("uint32"), 1775750519) == [1775750519 >> 16, 1775750519 & 0xFFFF]
    assert encode(reg("uint32"), None) == [0xFFFF, 0xFFFF]
    for typ, scale, x in (("float32", 1, -56.25), ("uint16", 10, 54.1), ("int16", 10, -71.1), ("uint32", 1, 7)):
        assert decode(reg(typ, scale), encode(reg(typ, scale), x)) == pytest.approx(x)
        assert decode(reg(typ, scale), encode(reg(typ, scale), None)) is None


def test_the_block_encodes_every_entry_as_the_reference(rmap):
    """The per-cycle path (struct, one pack) against regmap.encode, entry by entry, on an image with fresh,
    stale, NaN and out-of-range points."""
    from controller.carbon.account import EnergyAccount
    from controller.config import load_site
    from controller.dcim.block import BlockBuilder, Headroom
    from controller.params import build_params
    cfg = load_site("inner-mongolia-mine")
    params = build_params(cfg, None, t_ref_s=1.7e9)
    image = new_image()
    image["cycle"], image["t_s"] = 123456, 1.7e9 + 0.6
    rng = np.random.default_rng(7)
    image["value"][:] = rng.uniform(-300, 300, len(CATALOGUE))
    image["quality"][:] = Q_OK
    image["value"][INDEX["battery_a"]] = 5000.0                        # beyond int16 x 10: saturates
    image["value"][INDEX["soc_pct"]] = -4.0                             # below uint16: 0
    image["quality"][INDEX["soh_pct"]] = Q_STALE
    image["value"][INDEX["cell_v_max"]] = math.nan                      # NaN with quality OK: still not available
    image["value"][INDEX["op_reserve_pct"]] = 0.0
    cmd = np.zeros(L.N_COMMANDS)
    cmd[L.C_BATTERY_KW], cmd[L.C_MODE], cmd[L.C_ALARMS_ACTIVE] = -42.25, L.MODE_CONSERVATIVE, 0b101
    state = L.new_state(1.7e9)
    state[L.S_LOAD_KW] = 77.7
    loop = SimpleNamespace(params=params, state=state, period_s=1.0)
    head = Headroom()
    head.latest = (1.7e9 - 30, {"now_kw": 12.5, "windows_kw": {"1h": 8.0, "4h": 3.0}, "short_kw": 0.0})
    b = BlockBuilder(rmap, writes_enabled=True, account=EnergyAccount(cfg), alarms=None, headroom=head)
    block, stale_na = b.build(loop, image, cmd)
    words = struct.unpack(f">{rmap.size}H", block)
    v, q = image["value"], image["quality"]
    want = {"heartbeat": 123456, "t_s": 1.7e9, "age": 0, "status": 1 | 2 | 4, "host_alarms": 0, "load_kw": 77.7,
            "reserve": cfg["battery"]["reserve_pct"], "headroom_now_kw": 12.5, "headroom_1h_kw": 8.0,
            "headroom_4h_kw": 3.0, "short_kw": 0.0, "headroom_state": 0, "headroom_age": 30.6,
            "interval_intensity": None, "interval_renewable_share": None, "interval_start_s": None,
            "interval_covered": None}
    co2 = float(v[INDEX["grid_co2_kg_per_kwh"]])
    want["grid_intensity"] = 1000 * (co2 if co2 > 0 else cfg["emissions"]["grid_kg_per_kwh"])
    want["grid_intensity_source"] = 1 if co2 > 0 else 0
    cfe_ok = image["quality"][INDEX["grid_cfe_pct"]] == Q_OK
    want["grid_cfe"] = float(v[INDEX["grid_cfe_pct"]]) if cfe_ok else cfg.get("carbon", {}).get("grid_cfe_pct", 0.0)
    want["grid_cfe_source"] = 1 if cfe_ok else 0
    n_na = 0
    for r in rmap.registers:
        if r.kind == "point":
            i = INDEX[r.ref]
            x = float(v[i]) if q[i] == Q_OK and math.isfinite(v[i]) else None
        elif r.kind == "cmd":
            x = float(cmd[getattr(L, "C_" + r.ref.upper())])
        elif r.kind == "param":
            x = float(params[getattr(L, "P_" + r.ref.upper())])
        elif r.kind == "const":
            x = float(int(r.ref, 0))
        elif r.ref == "not_available_count":
            continue
        else:
            x = want[r.ref]
        n_na += x is None
        assert list(words[r.address:r.address + r.words]) == encode(r, x), r.name
    assert decode(rmap.by_name("not_available_count"), [words[8]]) == n_na
    assert words[rmap.by_name("battery_current").address] == 0x7FFF
    assert words[rmap.by_name("soc").address] == 0
    gaps = set(range(rmap.size)) - {a for r in rmap.registers for a in range(r.address, r.address + r.words)}
    assert gaps and all(words[a] == 0xFFFF for a in gaps)
    stale = struct.unpack(f">{rmap.size}H", b.stale_view(block, stale_na))
    for r in rmap.registers:
        got = stale[r.address:r.address + r.words]
        if r.kind in ("const", "param") or r.ref in ("heartbeat", "t_s"):
            assert got == words[r.address:r.address + r.words], r.name
        elif r.ref == "status":
            assert got == (2,)
        elif r.ref not in ("not_available_count", "age"):
            assert decode(r, got) is None, r.name
    for _ in range(200):
        b.build(loop, image, cmd)
    fresh_time = sorted(b.build_s)
    print(f"block build p50 {1e6 * fresh_time[len(fresh_time) // 2]:.1f} us")
    assert fresh_time[len(fresh_time) // 2] < 500e-6


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('address = 102\n', 'address = 101\n', 1), "already used"),
    (lambda t: t.replace('type = "float32"', 'type = "float64"', 1), "type must be one of"),
    (lambda t: t.replace('source = "point:pv_kw"', 'source = "pv_kw"', 1), "source must be KIND:NAME"),
    (lambda t: t.replace('name = "grid_kw"', 'name = "pv_kw"', 1), "duplicate name"),
    (lambda t: t.replace('write = "mode"', 'write = "genset"', 1), "names its write"),
])
def test_a_bad_map_is_refused(tmp_path, edit, message):
    p = tmp_path / "map.toml"
    p.write_text(edit(MAP_PATH.read_text()))
    with pytest.raises(MapError, match=message):
        load_map(p)


def test_a_bad_map_source_name_is_refused_when_compiled(tmp_path):
    from controller.dcim.block import BlockBuilder
    p = tmp_path / "map.toml"
    p.write_text(MAP_PATH.read_text().replace('source = "point:pv_kw"', 'source = "point:pv_kwh"', 1))
    with pytest.raises(MapError, match="unknown point 'pv_kwh'"):
        BlockBuilder(load_map(p), writes_enabled=False, account=None)


def _site_with(tmp_path, dcim: str) -> Path:
    src = (ROOT / "profiles" / "sites" / "inner-mongolia-mine.toml").read_text()
    p = tmp_path / "site.toml"
    p.write_text(src + "\n[dcim]\n" + dcim)
    return p


@pytest.mark.parametrize("dcim, problem", [
    ('enabled = true\n', "dcim.bind: required when dcim.enabled = true"),
    ('enabled = true\nbind = "0.0.0.0"\n', "dcim.bind: 0.0.0.0 listens on every interface"),
    ('enabled = true\nbind = "::"\n', "dcim.bind: :: listens on every interface"),
    ('enabled = true\nbind = "10.0.0.5 eth1"\n', "dcim.bind: expected an IP address"),
    ('enabled = true\nbind = "10.0.0.5"\nport = 70000\n', "dcim.port: expected an integer >= 1 and <= 65535"),
    ('enabled = true\nbind = "10.0.0.5"\nunit_id = 0\n', "dcim.unit_id"),
    ('enabled = true\nbind = "10.0.0.5"\nwrite = true\n', "dcim.write: unknown key"),
    ('enabled = "yes"\n', "dcim.enabled: expected true or false"),
])
def test_the_dcim_table_is_validated(tmp_path, dcim, problem):
    from controller.config import load_site
    from controller.schema import ProfileError
    with pytest.raises(ProfileError) as err:
        load_site(_site_with(tmp_path, dcim))
    assert problem in str(err.value)


def test_edge_ems_check_exits_2_naming_the_dcim_key(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "check", "--site",
                           str(_site_with(tmp_path, 'enabled = true\nbind = "10.0.0.5"\nwrite = true\n'))],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "dcim.write: unknown key" in proc.stderr, proc.stderr


def test_valid_dcim_tables(tmp_path):
    from controller.config import load_site
    cfg = load_site(_site_with(tmp_path, 'enabled = true\nbind = "0.0.0.0"\nallow_any = true\nwrites = true\n'))
    assert cfg["dcim"]["enabled"] and cfg["dcim"]["port"] == 502 and cfg["dcim"]["unit_id"] == 1
    cfg = load_site(_site_with(tmp_path, 'enabled = true\nbind = "eth1"\nport = 1502\n'))
    assert cfg["dcim"]["bind"] == "eth1"
    assert load_site("inner-mongolia-mine")["dcim"] == {
        "enabled": False, "bind": "", "allow_any": False, "port": 502, "unit_id": 1, "writes": False,
        "max_clients": 4, "setpoint_hold_s": 60.0, "max_age_s": 5.0}


class _Spool:
    def __init__(self):
        self.rows = []

    def put(self, kind, t, body):
        self.rows.append((kind, body))


def _gate(enabled=True, **kw):
    from controller.dcim.writes import WriteGate
    from controller.uplink.commands import CommandVerifier, Limits
    verifier = CommandVerifier(None, "gw", Limits(10, 95, 100, 100), lambda: "0", lambda v: True)
    up = SimpleNamespace(now_s=1.7e9, verifier=verifier, verdicts=[], spool=_Spool(), accepted=deque())
    return WriteGate(load_map(), enabled=enabled, uplink=up, **kw), up


def test_refusals_are_audited_once_a_minute_per_kind_and_writes_are_bounded():
    from controller.dcim.writes import DEVICE_BUSY, ILLEGAL_ADDRESS, ILLEGAL_VALUE
    gate, up = _gate(writes_per_min=30)
    reserve = load_map().by_name("reserve_request").address
    for _ in range(10):
        assert gate.handle(6, reserve, [990], "peer:1") == ILLEGAL_VALUE            # 99 % > soc_max 95
    assert gate.handle(6, 200, [1], "peer:1") == ILLEGAL_ADDRESS                    # soc: read-only
    assert [b["reason"][:13] for b in up.verdicts] == ["out of limits", "refused: addr"]
    assert gate.counts["limits"] == 10
    gate._refusal_at = {k: t - 61 for k, t in gate._refusal_at.items()}            # a minute later
    assert gate.handle(6, reserve, [990], "peer:1") == ILLEGAL_VALUE
    assert up.verdicts[-1]["repeated"] == 9
    assert gate.handle(6, reserve, [400], "peer:1") is None                         # accepted: always audited
    assert up.accepted[-1]["args"] == {"reserve_pct": 40.0} and up.verdicts[-1]["verdict"] == "accepted"
    n = 0
    while gate.handle(6, reserve, [410], "peer:1") is None:
        n += 1
    assert n == 30 - 13 and gate.handle(6, reserve, [410], "peer:1") == DEVICE_BUSY
    assert len(up.spool.rows) == 2 * len(up.verdicts)                                # cmd/result + event each
    assert {k for k, _ in up.spool.rows} == {"cmd/result", "event"}


def test_a_multi_register_write_is_all_or_nothing():
    from controller.dcim.writes import ILLEGAL_FUNCTION, ILLEGAL_VALUE
    gate, up = _gate()
    mode = load_map().by_name("mode_request").address
    assert gate.handle(16, mode, [1, 990], "p") == ILLEGAL_VALUE and not up.accepted
    assert gate.handle(16, mode, [1, 400, 0x10000 - 55], "p") is None
    assert [c["type"] for c in up.accepted] == ["mode", "reserve_soc", "setpoint_schedule"]
    assert up.accepted[2]["args"] == {"start_s": 1.7e9, "step_s": 60.0, "battery_kw": [-5.5]}
    assert gate.handle(22, mode, [1], "p") == ILLEGAL_FUNCTION
    gate_off, up_off = _gate(enabled=False)
    from controller.dcim.writes import ILLEGAL_ADDRESS
    assert gate_off.handle(6, mode, [1], "p") == ILLEGAL_ADDRESS and not up_off.accepted
    assert up_off.verdicts[-1]["reason"] == "refused: writes disabled ([dcim] writes = false)"
