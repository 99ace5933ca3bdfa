"""The planner kernel's array layout: the scalars (prm) and per-step rows (steps) every part of the
planner reads, the genset modes and the bus sources. Data only: one place to look up an index."""
from __future__ import annotations

import numpy as np


# prm (float64 scalars) layout
P_DT, P_XMAX, P_UNS, P_SF, P_CAP, P_E0, P_EHI, P_CMAX, P_DMAX, P_ETAC, P_ETAD, P_WEAR, P_TV = range(13)
P_PMIN, P_PMAX, P_QCOST, P_ONCOST, P_START, P_ON0, P_PEAK, P_HASD, P_SOC0 = range(13, 22)
P_PEAK0 = 22  # peak already billed in this period (kW): import up to it is free of the peak term
N_PRM = 23
# steps (2-D float64, one column per step) layout
S_LOAD, S_PV, S_GCOST, S_XPRICE, S_GMAX, S_FLOOR = range(6)
N_STEPS = 6
# diesel mode per step
MODE_OFF, MODE_ON, MODE_RELAX = 0, 1, 2
# bus sources, in tie-break order
SRC_PV, SRC_EXPORT, SRC_GRID, SRC_DIESEL, SRC_UNSERVED = range(5)
N_SRC = 5
MAX_CAND = 24
TINY = 1e-12
INF = np.inf
