"""The contract between field I/O and the controller.

A device speaks in *canonical device points*: a small vocabulary per device class with the unit in the
name (``power_kw``, ``soc_pct``, ``cell_v_max``...), whatever registers or frames it takes to get
them. The site profile gives each device a *role* (``grid_meter``, ``pv_meter``, ``bms``...), and the
controller's point catalogue maps ``role.point`` to a process-image slot. So a new meter model is a new
register map in profiles/devices/, never new controller code, and the controller never opens a port.

The simulator's in-process devices and the real Modbus/CAN devices implement the same interface, so
the scan cycle cannot tell them apart.
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol

# Quality of a reading, as stored in the process image.
QUALITY_OK = 0
QUALITY_STALE = 1  # no fresh value within the point's max age
QUALITY_ERROR = 2  # the last attempt failed (timeout, CRC, exception)

# sink(device_name, point, value, t_mono_s, quality): where a device drops what it read.
Sink = Callable[[str, str, float, float, int], None]

# Canonical points per device class (read side). Units are in the names.
CANONICAL_POINTS = {
    "meter": ("power_kw", "voltage_v", "current_a", "frequency_hz", "pf", "import_kwh", "export_kwh"),
    "pcs": ("power_kw", "soc_pct", "setpoint_kw", "state"),
    "bms": ("soc_pct", "soh_pct", "voltage_v", "current_a", "temp_c", "cvl_v", "ccl_a", "dcl_a", "dvl_v",
            "cell_v_max", "cell_v_min", "cell_temp_max_c", "cell_temp_min_c", "charge_enable",
            "discharge_enable", "force_charge", "alarm_bits", "warning_bits"),
    "genset": ("power_kw", "running", "available", "fuel_pct", "run_hours_h", "starts", "alarm_bits"),
    "pv_inverter": ("power_kw", "available_kw", "limit_kw"),
    "compute": ("it_kw", "cooling_kw", "aux_kw", "job_kw", "job_start_s", "job_end_s",
                *(f"djob{k}_{f}" for k in range(3) for f in ("kw", "start_s", "dur_s", "deadline_s", "state"))),
    "weather": ("ambient_c", "irradiance_w_m2", "pv_cut_frac", "warn_start_s", "warn_end_s", "warn_ramp_s",
                "grid_risk"),
    "grid": ("available", "price_per_kwh", "co2_kg_per_kwh", "import_max_kw", "outage_start_s", "outage_end_s",
             "outage_grid_risk"),
}

# Canonical commands per device class (write side).
CANONICAL_COMMANDS = {
    "pcs": ("setpoint_kw",),          # + discharge, - charge (generator convention, as OpenEMS)
    "genset": ("run",),               # 1 start/run, 0 stop (the driver maps to control keys)
    "genset_kw": ("setpoint_kw",),
    "pv_inverter": ("limit_kw",),
}


class Device(Protocol):
    """One field device, polled by the scan cycle's acquire step and written by its actuate step."""

    name: str
    kind: str  # a key of CANONICAL_POINTS

    def acquire(self, now_mono_s: float, sink: Sink) -> None:
        """Read what is due this cycle and hand every value to ``sink``; never raise for a field fault."""

    def actuate(self, commands: dict[str, float], now_mono_s: float) -> None:
        """Write canonical commands (a subset of CANONICAL_COMMANDS[kind]); never raise for a field fault."""

    def close(self) -> None:
        """Release ports and buses."""


def iter_points(kind: str) -> Iterable[str]:
    return CANONICAL_POINTS[kind]
