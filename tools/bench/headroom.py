"""Green headroom cost: one computation (24 h horizon, 15-min steps, now + 6 windows + 24 hours, bisection)
against the scan period it must fit in, and the carbon ledger's append (sign + fsync) against one interval.

    python -m tools.bench.headroom [--runs 200]

Prints ms per computation and the ratio to a 1 s scan period (goal: <= 0.01 on this machine, so a
Cortex-A53 at ~15x slower still spends < 15 % of one cycle once a minute), and ms per ledger append.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from controller.carbon.ledger import LedgerWriter
from controller.compute.headroom import Outlook, green_headroom
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CFG = {"battery": {"capacity_kwh": 500.0, "reserve_pct": 35.0, "soc_max_pct": 95.0, "charge_max_kw": 250.0,
                   "discharge_max_kw": 250.0, "eta_charge": 0.96, "eta_discharge": 0.96}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args(argv)
    k = np.arange(96)
    pv = np.clip(150.0 * np.sin((k / 4.0 - 6.0) / 12.0 * np.pi), 0.0, None)     # a clear day from midnight
    load = 80.0 + 10.0 * np.cos(k / 96.0 * 2 * np.pi)
    o = Outlook.from_site(CFG, pv, load, 60.0, 0.25, it_share=0.87)
    green_headroom(o)                                                              # compile / load the cache
    t = time.perf_counter()
    for _ in range(args.runs):
        green_headroom(o)
    ms = (time.perf_counter() - t) / args.runs * 1e3
    with tempfile.TemporaryDirectory() as d:
        w = LedgerWriter(Path(d) / "ledger", Ed25519PrivateKey.generate(), {"gateway_id": "bench"})
        body = {"pad": "x" * 3000}                                                 # an interval record's size
        t = time.perf_counter()
        for _ in range(50):
            w.append("interval", body)
        append_ms = (time.perf_counter() - t) / 50 * 1e3
        w.close()
    print(json.dumps({"headroom_ms": round(ms, 3), "headroom_vs_1s_period": round(ms / 1000.0, 5),
                      "ledger_append_ms": round(append_ms, 3), "append_vs_15min": round(append_ms / 900e3, 8)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
