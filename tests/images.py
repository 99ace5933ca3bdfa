"""Synthetic process images for kernel tests: a healthy site unless a test says otherwise."""
import numpy as np

from controller.core import layout as L
from controller.core.step import step
from controller.points import INDEX, N_POINTS

HEALTHY = dict(soc_pct=60.0, battery_v=768.0, bms_ccl_a=300.0, bms_dcl_a=300.0, cell_v_max=3.30,
               cell_v_min=3.28, cell_temp_max_c=25.0, cell_temp_min_c=24.0, bms_charge_enable=1.0,
               bms_discharge_enable=1.0, grid_available=1.0, grid_kw=40.0, pv_kw=10.0, battery_kw=0.0,
               genset_available=1.0, genset_running=1.0, it_kw=40.0, cooling_kw=5.0, op_genset=-1.0)


def image(**values):
    """(value, quality) arrays: every point fresh, HEALTHY values overridden by `values`."""
    value = np.zeros(N_POINTS)
    quality = np.zeros(N_POINTS, dtype=np.uint8)
    for name, v in {**HEALTHY, **values}.items():
        value[INDEX[name]] = v
    return value, quality


def run_images(params, images, t0=1000.0):
    """Step through images one second apart; [(state, commands, events)] per cycle."""
    state = L.new_state(t0 - 1.0)
    out = []
    for i, (value, quality) in enumerate(images):
        state, cmd, events, n = step(params, state, t0 + i, value, quality)
        out.append((state.copy(), cmd.copy(), events[:n].copy()))
    return out
