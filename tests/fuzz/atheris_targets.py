"""Coverage-guided fuzzing with atheris (libFuzzer) of a few decoders, as a complement to the hypothesis
targets: libFuzzer mutates bytes towards new branches, which finds what a strategy does not think of.

    python tests/fuzz/atheris_targets.py TARGET --write-seeds CORPUS_DIR
    python tests/fuzz/atheris_targets.py TARGET [libFuzzer options, e.g. -runs=20000] CORPUS_DIR

TARGET: market | compute | commands | ledger | recording | plan. Each input is handed to the decoder
under the same contract as its hypothesis target (docs/fuzzing.md); the documented refusal is caught,
anything else raises and libFuzzer reports it as a crash (exit code non-zero, the input saved as
crash-*). tests/fuzz/test_fuzz_atheris.py runs them under `make test-long`.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import tempfile

import atheris

from controller.carbon import ledger as LEDGER
from controller.core import plan_instance as PLAN
from controller.replay import RecordingError, iter_records, open_recording
from controller.uplink import commands as CMD
from drivers import compute as C
from drivers import market as MK

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY = Ed25519PrivateKey.generate()
_TMP = tempfile.mkdtemp(prefix="atheris-")


def market(data: bytes) -> None:
    try:
        MK.decode(data)
    except MK.MarketPayloadError:
        pass


def compute(data: bytes) -> None:
    for kind in C.INBOUND:
        try:
            C.decode(kind, data)
        except C.ComputePayloadError:
            pass


class _Counter:
    value = "0"

    def get(self):
        return self.value

    def set(self, v):
        self.value = v


def commands(data: bytes) -> None:
    """`data` as the payload of a validly signed command: everything behind the signature is reached."""
    c = _Counter()
    v = CMD.CommandVerifier(KEY.public_key(), "fuzz-gw", CMD.Limits(10.0, 95.0, 250.0, 250.0), c.get, c.set)
    raw = json.dumps({"payload": base64.b64encode(data).decode(),
                      "sig": base64.b64encode(KEY.sign(data)).decode()}).encode()
    verdict = v.verify(raw, 1_750_000_000.0)
    if verdict.reason.startswith("malformed: unchecked input"):
        raise AssertionError(verdict.reason)


def ledger(data: bytes) -> None:
    res = LEDGER.verify(data, None, keep=True)
    if res.ok:
        from controller.carbon.report import build_report
        try:
            build_report(res.payloads)
        except ValueError:
            pass


def recording(data: bytes) -> None:
    """`data` after a valid header (the records' part, where the deflate stream and the CRCs are)."""
    path = os.path.join(_TMP, "r.rec")
    with open(path, "wb") as f:
        f.write(_HEADER + data)
    try:
        info = open_recording(path)
        for _ in iter_records(path, info):
            pass
    except RecordingError:
        pass


def plan(data: bytes) -> None:
    path = os.path.join(_TMP, "i.json")
    with open(path, "wb") as f:
        f.write(data)
    try:
        PLAN.load_instance(path)
    except PLAN.InstanceError:
        pass


def _header() -> bytes:
    import numpy as np
    from controller.config import load_site
    from controller.core import layout as L
    from controller.params import build_params
    from controller.replay import header_bytes
    return header_bytes(np.asarray(build_params(load_site("inner-mongolia-mine"))), L.new_state(0.0))


TARGETS = {"market": market, "compute": compute, "commands": commands, "ledger": ledger,
           "recording": recording, "plan": plan}


def seeds(name: str) -> list[bytes]:
    """Valid inputs to start from: json's parser is C code libFuzzer cannot see into, so without a valid
    message to mutate it seldom gets past the JSON to the decoder's own checks."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.dirname(here)]       # tests/fuzz (the targets), tests (images.py)
    if name == "market":
        from test_fuzz_netinputs import market_dict
        return [json.dumps(market_dict(4)).encode(), json.dumps(market_dict(2, 60)).encode()]
    if name == "compute":
        from test_fuzz_netinputs import JOB, POWER
        return [json.dumps(POWER).encode(), json.dumps(JOB).encode()]
    if name == "commands":
        from test_fuzz_commands import GOOD_ARGS, base_command
        return [json.dumps({**base_command(k), "gateway": "fuzz-gw"}).encode() for k in GOOD_ARGS]
    if name == "ledger":
        from test_fuzz_ledger import GOOD_BYTES
        return [GOOD_BYTES]
    if name == "recording":
        from test_fuzz_recording import HEAD_LEN, OPEN, CLOSED
        return [OPEN[HEAD_LEN:], CLOSED[HEAD_LEN:]]
    from test_fuzz_plan import BASE
    return [json.dumps(BASE).encode()]


if __name__ == "__main__":
    name = sys.argv[1]
    if sys.argv[2:3] == ["--write-seeds"]:          # atheris_targets.py TARGET --write-seeds DIR
        os.makedirs(sys.argv[3], exist_ok=True)
        for i, seed in enumerate(seeds(name)):
            with open(os.path.join(sys.argv[3], f"seed-{i}"), "wb") as f:
                f.write(seed)
        sys.exit(0)
    _HEADER = _header() if name == "recording" else b""
    # instrument_all, not instrument_imports: the editable install's import finder bypasses the import
    # hook, and the targets' modules (and json's pure-Python parts) are loaded by now
    atheris.instrument_all()
    atheris.Setup([sys.argv[0]] + sys.argv[2:], TARGETS[name])
    atheris.Fuzz()
