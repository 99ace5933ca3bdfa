"""IT power from PromQL queries -> one ``compute/power`` payload (drivers/compute.py), checked by the
gateway's own parser before it goes out.

Each ``[[power.query]]`` is evaluated at the same instant; its series go ``into`` one part of the
payload: ``jobs`` / ``nodes`` / ``racks`` keyed by a label's value (with a prefix, e.g. ``slurm-`` so a
job's power carries the id its announcement has), or ``total`` / ``cooling`` / ``aux`` as one number.
Values are multiplied by ``scale`` (0.001 for W, 1 for kW) and *added* per key: two queries into the
same map must measure disjoint energy (Kepler's CPU and DCGM's GPU, yes; RAPL ``package`` and ``core``,
no: ``package`` already contains ``core`` and ``uncore``; docs/bridge.md).

A cycle publishes nothing when a query fails, or a ``required`` one comes back empty, or nothing at all
was measured: the gateway's ``it_kw`` then goes stale by its max age, which is the truth, where a total
without its PDU would be a wrong number with a fresh stamp.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from drivers.compute import ComputePayloadError, V, parse_power
from drivers.isotime import utc_iso

from controller.bridge.config import MAP_INTO
from controller.bridge.prom import PromClient, PromError

MAX_PAYLOAD = 64 * 1024            # the gateway drops a bigger inbound message (uplink InboundGate)
MAX_ID = 128                       # drivers/compute.py: map keys are 1..128 characters


@dataclass
class PowerReport:
    """What one cycle did, for the log line and the tests."""

    payload: bytes | None = None
    errors: list = field(default_factory=list)
    skipped: dict = field(default_factory=lambda: defaultdict(int))   # reason -> series


class PowerSampler:
    def __init__(self, client: PromClient, queries: list[dict], source: str = ""):
        self.client, self.queries, self.source = client, queries, source

    def sample(self, at_s: float) -> PowerReport:
        rep = PowerReport()
        maps = {k: defaultdict(float) for k in MAP_INTO}
        scalars: dict[str, float] = {}
        for q in self.queries:
            try:
                series = self.client.query(q["query"], at_s, what=f"power.query {q['name']!r}")
            except PromError as exc:
                rep.errors.append(str(exc))
                continue
            if not series and q["required"]:
                rep.errors.append(f"power.query {q['name']!r}: no series (required = true)")
                continue
            for s in series:
                kw = s.value * q["scale"]
                if kw < 0.0:
                    rep.skipped[f"{q['name']}: negative"] += 1
                    continue
                if q["into"] in MAP_INTO:
                    name = s.labels.get(q["label"], "")
                    if not name:
                        rep.skipped[f"{q['name']}: no label {q['label']!r}"] += 1
                        continue
                    key = q["prefix"] + name
                    if len(key) > MAX_ID:
                        rep.skipped[f"{q['name']}: id over {MAX_ID} characters"] += 1
                        continue
                    maps[q["into"]][key] += kw
                else:
                    scalars[q["into"]] = scalars.get(q["into"], 0.0) + kw
        if rep.errors:
            return rep
        doc = {"v": V, "t": utc_iso(at_s), "source": self.source}
        if "total" in scalars:
            doc["total_kw"] = round(scalars["total"], 4)
        for k in ("cooling", "aux"):
            if k in scalars:
                doc[f"{k}_kw"] = round(scalars[k], 4)
        for k, m in maps.items():
            if m:
                doc[k] = {name: round(kw, 4) for name, kw in sorted(m.items())}
        if "total_kw" not in doc and not doc.get("nodes") and not doc.get("racks"):
            rep.errors.append("nothing measured: no total, node or rack series this cycle")
            return rep
        payload = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        if len(payload) > MAX_PAYLOAD:
            rep.errors.append(f"compute/power of {len(payload)} bytes is over the gateway's {MAX_PAYLOAD} "
                              "(aggregate the jobs in PromQL: topk, or by a coarser label)")
            return rep
        try:
            parse_power(payload)                    # the gateway's parser: what it would refuse never leaves
        except ComputePayloadError as exc:
            rep.errors.append(f"the gateway would refuse it: {exc}")
            return rep
        rep.payload = payload
        return rep
