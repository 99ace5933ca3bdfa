"""Fuzz: the carbon ledger's lines (controller/carbon/ledger.py) through `edge-ems ledger verify` and
`edge-ems ledger report` (controller/carbon/report.py), run in-process through controller.cli.main.

Most examples are signed with the gateway key generated here and chained correctly, so they get past
the signature to what a valid signature does not prove: a record's shape and types (a hostile or buggy
writer holding the key). Others are the file's bytes mutated, or junk lines.

Contract (docs/fuzzing.md):
- `ledger verify`: exit 0 "ok: ...", 1 "FAILED: first bad record: ..." (stdout), or 2 "edge-ems: ..."
  (stderr, bad input). Never an exception.
- `ledger report`: exit 0 (verified), 1 (does not verify: a WARNING and the figures), or 2 with
  a line "edge-ems: FILE: record n=...: <field>: ..." on stderr naming the record and field that cannot be summed. The
  JSON printed is strict JSON (no NaN / Infinity) and the CSV has its header. Never an exception.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import example, given, strategies as st

import fuzz_harness as H
from controller.carbon.keys import public_b64, fingerprint, write_public_key
from controller.carbon.ledger import GENESIS_PREV, line_hash
from controller.cli import main

KEY = Ed25519PrivateKey.generate()
DIR = Path(tempfile.mkdtemp(prefix="fuzz-ledger-"))
PUB = DIR / "ledger.pub"
write_public_key(KEY, PUB)

GENESIS = {"gateway_id": "gw-fuzz", "site": "fuzz", "factors": {"grid_kg_per_kwh": 0.6}, "format": 1,
           "pubkey": public_b64(KEY.public_key()), "key_fingerprint": fingerprint(KEY.public_key())}


def interval(i: int) -> dict:
    """The fields of an interval record that verify checks and report sums (controller/carbon/intervals.py)."""
    t0 = 1_767_225_600 + 900 * i          # 2026-01-01T00:00:00Z + i intervals
    from drivers.isotime import utc_iso
    return {
        "t_start": utc_iso(t0), "t_end": utc_iso(t0 + 900), "partial": False, "covered_s": 900.0,
        "estimated_s": 0.0,
        "energy_kwh": {"sources": {"pv": 5.0, "pv_direct": 4.0, "battery_discharge": 1.0, "grid": 2.0, "diesel": 0.0},
                       "sinks": {"it": 6.0, "cooling": 1.0, "aux": 0.2, "battery_charge": 0.5, "export": 0.1,
                                 "curtailment": 0.0},
                       "e_dc": 7.5, "fuel": 0.0, "battery_loss_model": 0.05, "soc_delta": None,
                       "closure": {"residual_pct": 0.01}},
        "diesel_l": 0.0, "renewable_kwh": 4.5,
        "co2_kg": {"scope1_diesel": 0.0, "scope2_location": 1.2, "scope2_market": 1.0, "loads_location": 1.1,
                   "loads_market": 0.9},
        "cfe": {"onsite_kwh": 4.0, "contract_kwh": 0.0, "grid_kwh": 0.5, "load_kwh": 7.2},
        "jobs": {"job-1": {"it_kwh": 2.0, "kwh": 2.4, "kg_location": 0.3, "kg_market": 0.2, "label": "train"}},
    }


def signed_lines(bodies: list[tuple[str, dict]], loose: bool = False) -> list[bytes]:
    """A chain as LedgerWriter writes it (n, prev, kind, v, gw, clock), signed with KEY; `loose` lets
    NaN / Infinity into the payload JSON, which canonical() refuses but a reader must survive."""
    out, prev = [], GENESIS_PREV
    for n, (kind, body) in enumerate(bodies):
        payload = {**body, "v": 1, "n": n, "prev": prev, "kind": kind, "gw": "gw-fuzz", "clock": "synchronised"}
        head = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=loose).encode()
        line = head + b"|" + base64.b64encode(KEY.sign(head))
        out.append(line)
        prev = line_hash(line)
    return out


GOOD = [("genesis", GENESIS)] + [("interval", interval(i)) for i in range(3)]
GOOD_BYTES = b"\n".join(signed_lines(GOOD)) + b"\n"


def _set_path(d: dict, path: list[str], value) -> None:
    node = d
    for k in path[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[path[-1]] = value


def _paths(d: dict, prefix=()):
    for k, v in d.items():
        yield list(prefix) + [k]
        if isinstance(v, dict):
            yield from _paths(v, list(prefix) + [k])


INTERVAL_PATHS = sorted(_paths(interval(0)))


@st.composite
def ledgers(draw) -> bytes:
    how = draw(st.sampled_from(("signed", "signed", "signed", "bytes", "lines")))
    if how == "bytes":
        return draw(H.mutated(GOOD_BYTES))
    if how == "lines":
        lines = GOOD_BYTES.split(b"\n")
        i = draw(st.integers(0, len(lines)))
        junk = draw(st.one_of(st.binary(max_size=120), st.builds(H.deep, st.integers(10, 5000), st.sampled_from("[{")),
                              st.builds(lambda v: H.dumps_loose(v) + b"|" + base64.b64encode(b"\0" * 64),
                                        H.json_values)))
        return b"\n".join(lines[:i] + [junk] + lines[i:])
    bodies = copy.deepcopy(GOOD)
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(0, len(bodies) - 1))
        kind, body = bodies[k]
        if draw(st.integers(0, 8)) == 0:
            bodies[k] = (draw(st.sampled_from(("interval", "recovery", "genesis", "x"))), body)
            continue
        path = draw(st.sampled_from(INTERVAL_PATHS + [["pubkey"], ["n"], ["prev"], ["t_start"], ["jobs", "j"]]))
        if path[-1] in ("t_start", "t_end"):
            value = draw(H.times)
        elif draw(st.booleans()):
            value = draw(H.numbers)
        else:
            value = draw(H.json_values)
        _set_path(body, path, value)
    return b"\n".join(signed_lines(bodies, loose=True)) + b"\n"


def run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _strict(c):
    raise ValueError(f"{c} in the report")


def check_ledger(data: bytes, t_from=None, t_to=None, fmt="json") -> None:
    path = DIR / "ledger"
    path.write_bytes(data)
    code, out, err = run(["ledger", "verify", str(path), "--pubkey", str(PUB)])
    assert (code, out[:4]) in ((0, "ok: "), (1, "FAIL")) or (code == 2 and err.startswith("edge-ems: ")), \
        (code, out, err)
    argv = ["ledger", "report", str(path), "--pubkey", str(PUB), "--format", fmt]
    argv += [f"--from={t_from}"] if t_from else []
    argv += [f"--to={t_to}"] if t_to else []
    rcode, out, err = run(argv)
    assert rcode in (0, 1, 2), (rcode, out, err)
    if rcode == 2:
        assert not out and any(line.startswith("edge-ems: ") for line in err.splitlines()), (out, err)
        return
    assert rcode == code, (code, rcode, err)                  # report's verdict is verify's
    if fmt == "json":
        json.loads(out, parse_constant=_strict)
    else:
        assert out.startswith("period,from,to,"), out[:80]


@H.budget(ci=80, long=5000)
@given(ledgers())
@example(b"\n".join(signed_lines([GOOD[0], ("interval", {**interval(0), "t_start": "0001-01-01T00:00:00+01:00"})]))
         + b"\n")
@example(b"\n".join(signed_lines([GOOD[0], ("interval", interval(0)), ("interval", {
    **interval(1), "energy_kwh": {**interval(1)["energy_kwh"], "e_dc": 1.7e308}}), ("interval", {
        **interval(2), "energy_kwh": {**interval(2)["energy_kwh"], "e_dc": 1.7e308}})])) + b"\n")
@example(b"\n".join(signed_lines([GOOD[0], ("interval", {**interval(0), "jobs": {"j": {"it_kwh": 10 ** 400}}})]))
         + b"\n")
@example(b"\n".join(signed_lines([GOOD[0], ("interval", {**interval(0), "t_end": 7})])) + b"\n")
@example(b"\n".join(signed_lines([GOOD[0], ("interval", {**interval(0), "partial": []})])) + b"\n")
def test_ledger_lines_verify_and_report(data):
    H.hit("ledger.lines")
    check_ledger(data)


@H.budget(ci=60, long=1500)
@given(ledgers(), st.one_of(st.none(), H.times, st.sampled_from(["2026", "2026-01", "0001", "9999-12"])),
       st.one_of(st.none(), H.times), st.sampled_from(["json", "csv"]))
def test_ledger_report_periods_and_formats(data, t_from, t_to, fmt):
    H.hit("ledger.report_options")
    check_ledger(data, t_from, t_to, fmt)
