"""Score the MPC's forecasts of a sim run against what happened (`python -m tools.sim.forecast_score OUT`).

OUT is an `edge-ems sim --strategy mpc --out OUT` directory. The recording is replayed through `step`
(so the forecasters' learned state is exactly the controller's), and every `--every-min` minutes the
load and PV forecasts the planner would use (24 h in 15-min steps, announced job and weather warning
included) are issued and compared with the simulator's own minute log (OUT/minutes.npy: the load, and
the PV *available*, i.e. before any curtailment). Prints MAE, normalised MAE and bias, overall and for
the first hour / the rest.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def score(out_dir: Path, every_min: float = 15.0) -> dict:
    from controller.core import layout as L
    from controller.core.forecast import N_DERATE_STATE, N_LOAD_STATE, N_PV_PARAMS, load_forecast, pv_forecast, \
        score_issued
    from controller.core.mpc_strategy import PV_SUBSAMPLES, _job, _warning
    from controller.core.step import step
    from controller.replay import iter_records, open_recording

    rec = open_recording(out_dir / "recording")
    params = rec.params
    if int(params[L.P_STRATEGY]) != L.STRATEGY_MPC:
        raise SystemExit(f"{out_dir}: not an mpc run")
    H, dt_h = int(params[L.P_MPC_HORIZON]), float(params[L.P_MPC_DT_H])
    pv = params[L.P_PV_VECTOR:L.P_PV_VECTOR + N_PV_PARAMS]
    state = rec.state0.copy()
    issued_load, issued_pv = [], []
    t_start = None
    next_t = None
    for r in iter_records(out_dir / "recording", rec):
        value = np.ascontiguousarray(r.image["value"])
        quality = np.ascontiguousarray(r.image["quality"])
        t_s = float(r.image["t_s"])
        state, _, _, _ = step(params, state, t_s, value, quality)
        if t_start is None:
            t_start, next_t = t_s, t_s + 3600.0        # an hour of learning before the first score
        if t_s < next_t:
            continue
        next_t += every_min * 60.0
        jk, js, jd, nj = _job(value, quality)
        es, ee, ef, er, ne = _warning(value, quality)
        load = np.zeros(H)
        load_forecast(t_s, H, dt_h, state[L.S_LOADF:L.S_LOADF + N_LOAD_STATE], jk, js, jd, nj, load)
        pvf = np.zeros(H)
        pv_forecast(t_s, H, dt_h, pv, state[L.S_DERATE:L.S_DERATE + N_DERATE_STATE], es, ee, ef, er, ne,
                    PV_SUBSAMPLES, pvf)
        issued_load.append((t_s, load))
        issued_pv.append((t_s, pvf))
    log = np.load(out_dir / "minutes.npy")
    t = t_start + log[:, 0] * 3600.0
    return {"load": score_issued(issued_load, t, log[:, 3], dt_h),
            "pv": score_issued(issued_pv, t, log[:, 11], dt_h), "forecasts": len(issued_load)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="+")
    ap.add_argument("--every-min", type=float, default=15.0)
    args = ap.parse_args(argv)
    print("| run | forecasts | load MAE kW (nMAE) | load MAE first h / later | PV MAE kW (nMAE) | PV MAE first h / later |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for out in args.out:
        s = score(Path(out), args.every_min)
        cells = []
        for key in ("load", "pv"):
            r = s[key]
            lead = r["mae_by_lead"]
            cells.append(f"{r['mae']:.2f} ({r['nmae']:.1%})")
            cells.append(f"{np.nanmean(lead[:4]):.2f} / {np.nanmean(lead[4:]):.2f}")
        print(f"| {Path(out).name} | {s['forecasts']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
