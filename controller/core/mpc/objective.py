"""Objective modes of the planner (issue 16): `cost` (money, carbon at the site's internal price) and
`carbon` (kg CO2e first, money only as the tie-breaker), as one weighted objective the DP solves unchanged.

Why a weight and not a second solve: the DP minimises one convex piecewise-linear objective. For an LP
(and the convex DP is one) the lexicographic optimum of (K, C) - K the carbon tier, C money - is the
optimum of W*K + C for every W above a finite threshold, and that threshold can be bounded from the
instance itself: if any two feasible plans differ in money by at most dC, then with W = dC / delta the
weighted optimum x_w has K(x_w) <= K* + delta and C(x_w) <= C(lexicographic optimum). Proof: J(x_w) <=
J(x_lex) gives W (K(x_w) - K*) <= C(x_lex) - C(x_w) <= dC, and C(x_w) <= C(x_lex) + W (K* - K(x_w))
<= C(x_lex). With delta below the smallest CO2 gap between two vertices of the plan polytope it is the
exact lexicographic optimum; delta = LEX_REL x the instance's CO2 scale is what double precision can
still separate (docs/objectives.md: the derivation and its numerical limits).

The tiers, per kWh or per kWh-hour, built by the caller (controller/core/mpc_strategy.py, or
`pack_instance(inst, objective="carbon")` for a contract instance):
- K (kg): grid import x its intensity, diesel fuel x kg/L (Scope 1 + location-based Scope 2, the
  ledger's definition), stored energy at the horizon's end at its CO2 value (negative), and reliability
  first: unserved load at the value of lost load and the reserve floor's shortfall, both converted to kg
  at the site's kappa (kg per currency unit), so they weigh against CO2 as they weigh against money in
  cost mode;
- C (money): energy - export revenue + wear + fuel + starts + peak demand charge - stored energy at the
  horizon's end at its money value. No penalty is counted twice: they are all in K.
Everything here is numba on the kernel's plain arrays (steps, prm of layout.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from controller.core.mpc.layout import (
    P_CMAX, P_DMAX, P_DT, P_EHI, P_HASD, P_ONCOST, P_PEAK, P_PMAX, P_QCOST, P_SF, P_START, P_TV, P_UNS, P_WEAR,
    P_XMAX,
    S_GCOST, S_GMAX, S_LOAD, S_XPRICE)

OBJ_COST, OBJ_CARBON = 0, 1
OBJECTIVES = ("cost", "carbon")
# CO2 resolution of the carbon objective, relative to the instance's CO2 scale (see money_range / fold_carbon)
LEX_REL = 1e-7


@njit(cache=True, error_model="numpy")
def money_range(steps, prm):
    """An upper bound on max C - min C over every feasible plan of the money-tier instance (steps, prm):
    each term at its extremes within its box (grid, export, charge, discharge, diesel up to their
    limits, a start every other step, the peak at the highest import cap, stored energy from empty to
    full)."""
    H = steps.shape[1]
    dt = prm[P_DT]
    hasd = prm[P_HASD] > 0.5
    g_top = 0.0
    total = 0.0
    for t in range(H):
        g = steps[S_GMAX, t]
        g_top = max(g_top, g)
        s = abs(steps[S_GCOST, t]) * g + abs(steps[S_XPRICE, t]) * prm[P_XMAX] \
            + abs(prm[P_WEAR]) * (prm[P_CMAX] + prm[P_DMAX])
        if hasd:
            s += abs(prm[P_QCOST]) * prm[P_PMAX] + abs(prm[P_ONCOST])
        total += dt * s
    if hasd:
        total += abs(prm[P_START]) * ((H + 2) // 2)
    total += abs(prm[P_PEAK]) * g_top + abs(prm[P_TV]) * prm[P_EHI]
    return total


@njit(cache=True, error_model="numpy")
def co2_scale(steps, prm, co2, q_kg, on_kg):
    """The instance's CO2 scale (kg): every step's load and full charge served by its most carbon-intensive
    source (grid at its highest intensity, the genset at rated output)."""
    H = steps.shape[1]
    kmax = 0.0
    for t in range(H):
        kmax = max(kmax, abs(co2[t]))
    if prm[P_HASD] > 0.5 and prm[P_PMAX] > 0.0:
        kmax = max(kmax, abs(q_kg) + abs(on_kg) / prm[P_PMAX])
    e = 0.0
    for t in range(H):
        e += prm[P_DT] * (steps[S_LOAD, t] + prm[P_CMAX])
    return kmax * e


@njit(cache=True, error_model="numpy")
def lex_weight(steps, prm, co2, q_kg, on_kg):
    """W = dC / delta: money range over CO2 resolution (delta = LEX_REL x the CO2 scale; 1 kg x LEX_REL
    when the instance has no CO2 at all, where W only keeps the reliability terms first)."""
    d_c = money_range(steps, prm)
    delta = LEX_REL * co2_scale(steps, prm, co2, q_kg, on_kg)
    if not delta > 0.0:
        delta = LEX_REL
    return max(d_c, 1.0) / delta


@njit(cache=True, error_model="numpy")
def fold_carbon(steps, prm, co2, q_kg, on_kg, tv_kg, uns_kg, sf_kg):
    """Turn the money-tier instance (steps, prm: prices, fuel money, wear, starts, peak, terminal money
    value; the penalties there are ignored) into the weighted carbon objective W*K + C in place:
    grid cost + W*co2_t, diesel per kWh + W*q_kg and per hour on + W*on_kg, terminal value + W*tv_kg,
    unserved W*uns_kg, reserve shortfall W*sf_kg (per kWh-hour). Returns W."""
    w = lex_weight(steps, prm, co2, q_kg, on_kg)
    for t in range(steps.shape[1]):
        steps[S_GCOST, t] += w * co2[t]
    if prm[P_HASD] > 0.5:
        prm[P_QCOST] += w * q_kg
        prm[P_ONCOST] += w * on_kg
    prm[P_TV] += w * tv_kg
    prm[P_UNS] = w * uns_kg
    prm[P_SF] = w * sf_kg
    return w
