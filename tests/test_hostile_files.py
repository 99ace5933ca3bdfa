"""Crafted files given to `edge-ems plan`, `replay --verify` and `ledger verify|report` (issue 15): each
is refused with a message naming the field or record and an exit code, never a traceback."""
import json
import struct
import zlib

import numpy as np
import pytest

from controller.cli import main
from controller.config import load_site
from controller.core import layout as L
from controller.core.step import step
from controller.params import build_params
from controller.points import INDEX, N_POINTS, new_image
from controller.replay import MAGIC, Recorder, header_bytes, new_deflate
from images import HEALTHY

def _instance(h=4):
    return {
        "dt_h": 0.25, "load_kw": [10.0] * h, "pv_kw": [0.0] * h, "grid_price": [0.1] * h,
        "export_price": [0.0] * h, "grid_co2_kg_per_kwh": [0.5] * h, "grid_import_max_kw": [100.0] * h,
        "export_max_kw": 0.0, "carbon_price_per_kg": 0.0, "peak_price_per_kw": 0.0,
        "unserved_penalty_per_kwh": 10.0, "soc_shortfall_penalty_per_kwh": 1.0,
        "battery": {"capacity_kwh": 100.0, "soc0_pct": 50.0, "soc_min_pct": 10.0, "soc_max_pct": 90.0,
                    "charge_max_kw": 50.0, "discharge_max_kw": 50.0, "eta_charge": 0.95, "eta_discharge": 0.95,
                    "wear_cost_per_kwh": 0.01, "terminal_value_per_kwh": 0.0, "reserve_pct": 0.0},
        "diesel": None,
    }


def _plan(tmp_path, data: bytes, capsys):
    p = tmp_path / "inst.json"
    p.write_bytes(data)
    code = main(["plan", str(p)])
    return code, capsys.readouterr().err


def test_plan_huge_integer_is_refused_naming_the_field(tmp_path, capsys):
    text = json.dumps(_instance()).replace('"export_max_kw": 0.0', '"export_max_kw": 1' + "0" * 400)
    code, err = _plan(tmp_path, text.encode(), capsys)
    assert code == 2 and "export_max_kw" in err and "Traceback" not in err
    code, err = _plan(tmp_path, text.replace("1" + "0" * 400, "1" + "0" * 5000).encode(), capsys)
    assert code == 2 and "export_max_kw" in err and "integer" in err


def test_plan_non_utf8_and_deep_nesting_are_refused(tmp_path, capsys):
    code, err = _plan(tmp_path, b'{"dt_h": "\xff\xfe"}', capsys)
    assert code == 2 and "UTF-8" in err
    code, err = _plan(tmp_path, b"[" * 10000 + b"]" * 10000, capsys)
    assert code == 2 and "nest" in err
    inst = _instance()
    inst["diesel"] = {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}
    code, err = _plan(tmp_path, json.dumps(inst).encode(), capsys)
    assert code == 2 and "nest" in err


def test_plan_horizon_and_file_size_are_bounded(tmp_path, capsys):
    from controller.core.plan_instance import MAX_FILE_BYTES, MAX_HORIZON
    inst = _instance(MAX_HORIZON + 1)
    code, err = _plan(tmp_path, json.dumps(inst).encode(), capsys)
    assert code == 2 and "load_kw" in err and str(MAX_HORIZON) in err
    code, err = _plan(tmp_path, b" " * (MAX_FILE_BYTES + 1), capsys)
    assert code == 2 and "bytes" in err


# ---- recordings ----------------------------------------------------------------------------------------

PARAMS = build_params(load_site("inner-mongolia-mine"))
T0 = 1767225600.0 + 3600.0


def _record(path, n=40):
    state = L.new_state(T0 - 1.0)
    rec = Recorder(path, PARAMS, state, {"site": "test"})
    rng = np.random.default_rng(3)
    img = new_image()
    for i in range(n):
        value = np.zeros(N_POINTS)
        for name, v in HEALTHY.items():
            value[INDEX[name]] = v
        value[INDEX["grid_kw"]] = rng.uniform(-20, 60)
        value[INDEX["pv_kw"]] = rng.uniform(0, 120)
        img["value"], img["quality"], img["t_s"], img["cycle"] = value, 0, T0 + i, i
        state, cmd, events, k = step(PARAMS, state, T0 + i, img["value"].copy(), img["quality"].copy())
        rec.append(img, cmd, events, k)
    rec._file.flush()                       # left open: a recording as a running gateway leaves it
    return path


def _with_header(blob: bytes, records: bytes = b"") -> bytes:
    return MAGIC + struct.pack("<I", len(blob)) + blob + struct.pack("<I", zlib.crc32(blob)) + records


def _replay(path, capsys, *extra):
    code = main(["replay", str(path), "--verify", *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def _good_header() -> dict:
    return json.loads(header_bytes(PARAMS, L.new_state(T0 - 1.0))[len(MAGIC) + 4:-4])


@pytest.mark.parametrize("case", ["bad_json", "not_object", "missing_params", "bad_base64", "huge_length",
                                  "segment_seq_string"])
def test_replay_corrupt_header_with_valid_crc_is_exit_2(tmp_path, capsys, case):
    h = _good_header()
    if case == "bad_json":
        blob = b"{not json"
    elif case == "not_object":
        blob = b"[1, 2]"
    elif case == "missing_params":
        del h["params"]
        blob = json.dumps(h).encode()
    elif case == "bad_base64":
        h["state0"] = "!!!"
        blob = json.dumps(h).encode()
    elif case == "segment_seq_string":
        h["segment"] = {"boot": "b", "seq": "1"}
        blob = json.dumps(h).encode()
    p = tmp_path / "r.rec"
    if case == "huge_length":
        p.write_bytes(MAGIC + struct.pack("<I", 0xFFFFFFF0) + b"{}")
    else:
        p.write_bytes(_with_header(blob))
    code, out = _replay(p, capsys)
    assert code == 2 and "header" in out and "Traceback" not in out


def test_replay_record_of_wrong_length_with_valid_crc_is_exit_2(tmp_path, capsys):
    good = _record(tmp_path / "g.rec", n=1).read_bytes()
    hlen = struct.unpack_from("<I", good, len(MAGIC))[0]
    head = good[:len(MAGIC) + 4 + hlen + 4]
    z = new_deflate()
    payload = b"\x00" * 37
    body = z.compress(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload) + z.flush(zlib.Z_SYNC_FLUSH)
    p = tmp_path / "r.rec"
    p.write_bytes(head + body)
    code, out = _replay(p, capsys)
    assert code == 2 and "record 0" in out and "length" in out
    code, out = _replay(p, capsys, "--check-limits")
    assert code == 2 and "Traceback" not in out


def test_replay_bit_flipped_mid_recording_fails_torn_tail_is_a_note(tmp_path, capsys):
    p = _record(tmp_path / "r.rec", n=60)
    data = bytearray(p.read_bytes())
    assert main(["replay", str(p), "--verify"]) == 0
    capsys.readouterr()
    hlen = struct.unpack_from("<I", data, len(MAGIC))[0]
    start = len(MAGIC) + 4 + hlen + 4
    for pos in (start + (len(data) - start) // 2, start + (len(data) - start) // 3):
        for bit in (0, 3, 7):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            p.write_bytes(bytes(bad))
            code, out = _replay(p, capsys)
            assert code == 1, (pos, bit, out)
            assert "corrupt" in out
    p.write_bytes(bytes(data[:-7]))                 # a write cut short by power loss
    code, out = _replay(p, capsys)
    assert code == 0 and "note:" in out


# ---- ledger --------------------------------------------------------------------------------------------

def _ledger(tmp_path, bodies):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from controller.carbon.ledger import LedgerWriter
    p = tmp_path / "ledger.jsonl"
    w = LedgerWriter(p, Ed25519PrivateKey.generate(), {"site": "t"})
    for b in bodies:
        w.append("interval", b)
    w.close()
    return p


def _interval(t="2026-01-01T00:00:00Z"):
    src = {k: 1.0 for k in ("pv", "pv_direct", "battery_discharge", "grid", "diesel")}
    snk = {k: 1.0 for k in ("it", "cooling", "aux", "battery_charge", "export", "curtailment")}
    return {"t_start": t, "t_end": t.replace(":00:00Z", ":15:00Z"), "covered_s": 900.0, "partial": False,
            "estimated_s": 0.0, "renewable_kwh": 1.0, "diesel_l": 0.0, "jobs": {},
            "energy_kwh": {"sources": src, "sinks": snk, "e_dc": 3.0, "fuel": 0.0, "battery_loss_model": 0.0,
                           "closure": {"residual_pct": 0.0}},
            "co2_kg": {k: 0.1 for k in ("scope1_diesel", "scope2_location", "scope2_market", "loads_location",
                                        "loads_market")},
            "cfe": {"onsite_kwh": 1.0, "contract_kwh": 0.0, "grid_kwh": 0.0, "load_kwh": 3.0}}


def _ledger_cmd(capsys, *argv):
    code = main(["ledger", *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_ledger_deeply_nested_line_fails_verify_naming_the_line(tmp_path, capsys):
    p = _ledger(tmp_path, [_interval()])
    lines = p.read_bytes().split(b"\n")
    lines.insert(1, b"[" * 100000 + b"]" * 100000 + b"|" + b"A" * 88)
    p.write_bytes(b"\n".join(lines))
    code, out = _ledger_cmd(capsys, "verify", str(p))
    assert code == 1 and "line 2" in out and "Traceback" not in out
    code, out = _ledger_cmd(capsys, "report", str(p))
    assert code in (1, 2) and "Traceback" not in out


@pytest.mark.parametrize("bad", ["string", "null"])
def test_ledger_numeric_field_holding_a_string_or_null(tmp_path, capsys, bad):
    iv = _interval()
    iv["energy_kwh"]["sources"]["grid"] = "12" if bad == "string" else None
    p = _ledger(tmp_path, [iv])          # n=0 is the genesis, n=1 this interval
    code, out = _ledger_cmd(capsys, "verify", str(p))
    assert code == 1 and "n=1" in out and "energy_kwh.sources.grid" in out, out
    code, out = _ledger_cmd(capsys, "report", str(p))
    assert code == 2 and "n=1" in out and "energy_kwh.sources.grid" in out and "Traceback" not in out
