"""Small helpers the benchmarks share."""
from __future__ import annotations

import numpy as np


def percentile(values, q: float, scale: float = 1.0) -> float:
    """The q-th percentile of `values` times `scale` (1000: seconds to ms); nan when there are none."""
    return float(np.percentile(np.asarray(values), q)) * scale if len(values) else float("nan")
