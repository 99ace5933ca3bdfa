"""The reference optimum of the risk-aware plan: the two-branch scenario tree as one LP / MILP for HiGHS.

Why: the tree DP (controller/core/mpc/branch.py) mixes two value functions at the event's start; this
formulation shares nothing with it. It is the issue-4 LP of mpc_reference twice ("grid holds", "grid
trips"), block-diagonal, with every variable of the steps before the event tied across the copies
(the first-stage decisions) and the objective (1-p) cost(holds) + p cost(trips). Each copy keeps its own
peak level (the true tree; the DP charges one shared level, an upper bound). scipy is a sim/test extra;
the gateway never imports this module.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from controller.core.mpc_reference import G, C, D, L, ON, Q, S, U, X, _build, plan_objective
from controller.core.plan_instance import PlanArrays, PlanInstance

__all__ = ["TreeReference", "solve_tree_reference"]


@dataclass
class TreeReference:
    hold: PlanArrays
    trip: PlanArrays
    objective: float        # (1-p) * objective(hold plan) + p * objective(trip plan), the contract formula
    highs_objective: float
    solve_ms: float
    status: int


def _plan(inst: PlanInstance, xv: np.ndarray, has_d: bool) -> PlanArrays:
    H = inst.horizon
    q = xv[Q].copy()
    on = (xv[ON] > 0.5) if has_d else np.zeros(H, dtype=bool)
    q[~on] = 0.0
    plan = dict(grid_kw=xv[G].copy(), export_kw=xv[X].copy(), charge_kw=xv[C].copy(), discharge_kw=xv[D].copy(),
                diesel_kw=q, curtail_kw=xv[U].copy(), unserved_kw=xv[L].copy(),
                soc_pct=np.concatenate([[inst.battery.soc0_pct], xv[S]]), diesel_on=on)
    return PlanArrays(objective=plan_objective(inst, **plan), **plan)


def solve_tree_reference(inst_hold: PlanInstance, inst_trip: PlanInstance, k0: int, p: float,
                         mip_rel_gap: float = 1e-6, time_limit_s: float = 120.0) -> TreeReference:
    """The tree's optimum by HiGHS: the two instances must agree before step k0 (checked by the caller's
    check_branches on the packed arrays); p is the weight of the trip branch."""
    H = inst_hold.horizon
    if inst_trip.horizon != H or (inst_hold.diesel is None) != (inst_trip.diesel is None):
        raise ValueError("tree reference: the branches must have the same horizon and the same genset")
    ch, loh, hih, Ah, clh, chh, inth, nb = _build(inst_hold)
    ct, lot, hit, At, clt, cht, intt, nb2 = _build(inst_trip)
    if ch.shape != ct.shape or nb != nb2:
        raise ValueError("tree reference: the branches build LPs of different shape (peak term in one only?)")
    n = ch.shape[0]
    cols = np.concatenate([b * H + np.arange(k0) for b in range(nb)])  # every first-stage variable
    tie = sp.csr_matrix((np.concatenate([np.ones(len(cols)), -np.ones(len(cols))]),
                         (np.concatenate([np.arange(len(cols))] * 2), np.concatenate([cols, cols + n]))),
                        shape=(len(cols), 2 * n))
    A = sp.vstack([sp.block_diag([Ah, At]), tie], format="csr")
    clo = np.concatenate([clh, clt, np.zeros(len(cols))])
    chi = np.concatenate([chh, cht, np.zeros(len(cols))])
    cost = np.concatenate([(1.0 - p) * ch, p * ct])
    integ = np.concatenate([inth, intt])
    t0 = time.perf_counter()
    res = milp(cost, constraints=LinearConstraint(A, clo, chi),
               bounds=Bounds(np.concatenate([loh, lot]), np.concatenate([hih, hit])),
               integrality=integ if integ.any() else None,
               options={"mip_rel_gap": mip_rel_gap, "time_limit": time_limit_s, "presolve": True})
    ms = (time.perf_counter() - t0) * 1e3
    if res.x is None:
        raise RuntimeError(f"HiGHS failed on the tree: {res.message}")
    has_d = inst_hold.diesel is not None
    hold = _plan(inst_hold, res.x[: nb * H].reshape(nb, H), has_d)
    trip = _plan(inst_trip, res.x[n: n + nb * H].reshape(nb, H), has_d)
    return TreeReference(hold, trip, (1.0 - p) * hold.objective + p * trip.objective, float(res.fun), ms,
                         int(res.status))
