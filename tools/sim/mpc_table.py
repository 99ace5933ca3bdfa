"""The mpc table of docs/mpc.md from sim output directories (`python -m tools.sim.mpc_table ROOT`).

ROOT/STRATEGY-SCENARIO/kpis.json, as written by
`edge-ems sim --scenario SCENARIO --hours 48 --seed 1 --strategy STRATEGY --out ROOT/STRATEGY-SCENARIO`.
Prints one markdown table (none / rule / mpc / oracle per scenario) and the checks of issue 4: mpc
beats rule on cost and co2, keeps unserved at 0 where rule does, and costs at most 5 % over the oracle.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SCENARIOS = ("inner-mongolia-mine", "gansu-edge", "nordic-wind")
STRATEGIES = ("none", "rule", "mpc", "oracle")
COLUMNS = (("cost", "cost"), ("co2_kg", "co2_kg"), ("unserved_kwh", "unserved_kwh"), ("diesel_l", "diesel_litres"),
           ("renewable_share", "renewable_share"), ("grid_peak_kw", "grid_peak_kw"), ("soc_end_%", "soc_end_pct"))


def load(root: Path) -> dict:
    out = {}
    for scn in SCENARIOS:
        for strat in STRATEGIES:
            path = root / f"{strat}-{scn}" / "kpis.json"
            if path.exists():
                out[scn, strat] = json.loads(path.read_text())
    return out


def table(kpis: dict) -> str:
    lines = ["| scenario | strategy | " + " | ".join(c for c, _ in COLUMNS) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in COLUMNS) + " |"]
    for scn in SCENARIOS:
        for strat in STRATEGIES:
            k = kpis.get((scn, strat))
            if k is None:
                continue
            cur = k.get("currency", "")
            cells = []
            for name, key in COLUMNS:
                v = k[key]
                cells.append(f"{v:.2f} {cur}" if name == "cost" else f"{v:.4f}" if name == "renewable_share"
                             else f"{v:.1f}")
            lines.append(f"| {scn} | {strat} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(kpis: dict) -> list[tuple[str, bool]]:
    res = []
    for scn in SCENARIOS:
        r, m, o = kpis.get((scn, "rule")), kpis.get((scn, "mpc")), kpis.get((scn, "oracle"))
        if r is None or m is None:
            continue
        res.append((f"{scn}: mpc cost {m['cost']:.2f} < rule {r['cost']:.2f}", m["cost"] < r["cost"]))
        res.append((f"{scn}: mpc co2 {m['co2_kg']:.1f} < rule {r['co2_kg']:.1f}", m["co2_kg"] < r["co2_kg"]))
        if r["unserved_kwh"] == 0.0:
            res.append((f"{scn}: mpc unserved {m['unserved_kwh']} == 0", m["unserved_kwh"] == 0.0))
        if o is not None:
            ratio = m["cost"] / o["cost"]
            res.append((f"{scn}: mpc cost / oracle cost = {ratio:.3f} <= 1.05", ratio <= 1.05))
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "out/mpc")
    kpis = load(root)
    print(table(kpis))
    print()
    ok = True
    for text, passed in checks(kpis):
        print(("ok   " if passed else "FAIL ") + text)
        ok = ok and passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
