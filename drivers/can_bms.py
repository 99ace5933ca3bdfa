"""CAN BMS (Pylontech / SMA / Victron style frames), decoded with cantools from a DBC file.

The BMS broadcasts its frames on its own schedule (typically every 1 s); nothing is polled. ``acquire``
drains every frame received since the last cycle without waiting, keeps the newest value of each signal
with the cycle time it arrived, and reports a point STALE once nothing has refreshed it for
``max_age_s``: a silent BMS must not leave its last current limits looking valid.

A value the wire cannot carry is not a value: the 0x356 pack voltage (s16 x 0.01 V) stops at 327.67 V,
and a BMS of a 240-cell pack sends 0 or a wrapped number there. Given the pack's plausible range
(``voltage_range``, from the site's cells and cell limits), a voltage outside it is reported as NaN with
QUALITY_ERROR, not as "0.0 V".
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import can
import cantools

from drivers.base import QUALITY_ERROR, QUALITY_OK, QUALITY_STALE, Sink
from drivers.modbus.backoff import Backoff

log = logging.getLogger(__name__)
DEFAULT_DBC = Path(__file__).resolve().parents[1] / "profiles" / "can" / "pylon_sma_bms.dbc"
KEEPALIVE_ID = 0x305
MAX_FRAMES_PER_CYCLE = 1000  # a babbling node must not hold the scan cycle

# (message name, signal name) -> canonical bms point
SIGNAL_POINTS = {
    ("BMS_Limits", "ChargeVoltageLimit"): "cvl_v",
    ("BMS_Limits", "ChargeCurrentLimit"): "ccl_a",
    ("BMS_Limits", "DischargeCurrentLimit"): "dcl_a",
    ("BMS_Limits", "DischargeVoltageLimit"): "dvl_v",
    ("BMS_SocSoh", "StateOfCharge"): "soc_pct",
    ("BMS_SocSoh", "StateOfHealth"): "soh_pct",
    ("BMS_Measurements", "BatteryVoltage"): "voltage_v",
    ("BMS_Measurements", "BatteryCurrent"): "current_a",
    ("BMS_Measurements", "BatteryTemperature"): "temp_c",
    ("BMS_PylonAlarms", "Protection"): "alarm_bits",
    ("BMS_PylonAlarms", "Warning"): "warning_bits",
    ("BMS_Requests", "ChargeEnable"): "charge_enable",
    ("BMS_Requests", "DischargeEnable"): "discharge_enable",
    ("BMS_CellExtremes", "MaxCellVoltage"): "cell_v_max",
    ("BMS_CellExtremes", "MinCellVoltage"): "cell_v_min",
    ("BMS_CellExtremes", "MaxCellTemperature"): "cell_temp_max_c",
    ("BMS_CellExtremes", "MinCellTemperature"): "cell_temp_min_c",
}
# The wire's sign convention differs from the canonical point: 0x356 current is + charge, the canonical
# bms current_a (controller/points.py battery_a) is + discharge, like every power in the controller.
SIGNAL_SIGN = {("BMS_Measurements", "BatteryCurrent"): -1.0}
POINTS = ("soc_pct", "soh_pct", "voltage_v", "current_a", "temp_c", "cvl_v", "ccl_a", "dcl_a", "dvl_v",
          "cell_v_max", "cell_v_min", "cell_temp_max_c", "cell_temp_min_c", "charge_enable",
          "discharge_enable", "force_charge", "alarm_bits", "warning_bits")


def active_2bit_flags(word: int, fields: int = 16) -> int:
    """SMA/Victron 0x35A packs each alarm in 2 bits (01 ok, 10 active): one bit per active alarm."""
    out = 0
    for i in range(fields):
        if (word >> (2 * i)) & 0b11 == 0b10:
            out |= 1 << i
    return out


class CanBms:
    """A Device (drivers.base) of kind 'bms' on a CAN bus."""

    kind = "bms"

    def __init__(self, name: str, bus: can.BusABC | None = None, *, interface: str = "socketcan",
                 channel: str = "can0", bitrate: int = 500_000, dbc_path: str | Path = DEFAULT_DBC,
                 max_age_s: float = 5.0, keepalive: bool = False,
                 voltage_range: tuple[float, float] | None = None, bus_kwargs: dict | None = None,
                 lazy: bool = False):
        """``lazy``: an interface that does not open (adapter missing at boot) is retried with a growing
        wait from ``acquire`` while the points stay STALE, instead of raising here."""
        self.name = name
        self._own_bus = bus is None
        self._open_args = dict(interface=interface, channel=channel, bitrate=bitrate, **(bus_kwargs or {}))
        self.url = f"{interface}:{channel}"
        self.open_error = ""
        self._reopen = Backoff(base_s=1.0, cap_s=30.0, threshold=1)
        self.bus = bus
        if bus is None and not self._open(time.monotonic()) and not lazy:
            raise can.CanError(self.open_error)
        self.voltage_range = voltage_range
        self.implausible = 0          # readings dropped because the wire could not carry them
        self.db = cantools.database.load_file(str(dbc_path))
        self.max_age_s = max_age_s
        self.keepalive = keepalive
        self.manufacturer = ""
        self.frames = 0
        self.bad_frames = 0
        self._values: dict[str, tuple[float, float]] = {}  # point -> (value, t)
        self._pylon_alarms_seen = False
        self._ids = {m.frame_id for m in self.db.messages}

    def _open(self, now_s: float) -> bool:
        try:
            self.bus = can.Bus(**self._open_args)
        except (can.CanError, OSError, ValueError, ImportError) as exc:   # python-can: several types per backend
            self.bus = None
            self.open_error = f"{self.url}: cannot open: {exc}"
            self._reopen.failed(now_s)
            return False
        self.open_error = ""
        self._reopen.succeeded()
        return True

    def _lost(self, exc: Exception) -> None:
        if not self._own_bus:
            return
        try:
            self.bus.shutdown()
        except (can.CanError, OSError):
            pass
        self.bus = None
        self.open_error = f"{self.url}: lost: {exc}"
        self._reopen.failed(time.monotonic())

    def _decode(self, msg: can.Message, now_s: float) -> None:
        if msg.is_error_frame or msg.is_remote_frame or msg.is_extended_id or msg.arbitration_id not in self._ids:
            return
        try:
            message = self.db.get_message_by_frame_id(msg.arbitration_id)
            signals = message.decode(bytes(msg.data), decode_choices=False)
        except (cantools.database.DecodeError, ValueError, KeyError) as exc:
            self.bad_frames += 1
            log.debug("%s: bad frame 0x%X: %s", self.name, msg.arbitration_id, exc)
            return
        self.frames += 1
        name = message.name
        if name == "BMS_Manufacturer":
            self.manufacturer = bytes(msg.data).decode("ascii", "replace").rstrip(" \x00")
            return
        if name == "BMS_SmaAlarms":
            if not self._pylon_alarms_seen:  # 0x359 is richer; use 0x35A only from BMSs without it
                self._values["alarm_bits"] = (float(active_2bit_flags(int(signals["Alarms"]))), now_s)
                self._values["warning_bits"] = (float(active_2bit_flags(int(signals["Warnings"]))), now_s)
            return
        if name == "BMS_PylonAlarms":
            self._pylon_alarms_seen = True
        if name == "BMS_Requests":
            force = int(signals["ForceChargeI"]) | int(signals["ForceChargeII"])
            self._values["force_charge"] = (float(force), now_s)
        for signal, value in signals.items():
            point = SIGNAL_POINTS.get((name, signal))
            if point is not None:
                self._values[point] = (SIGNAL_SIGN.get((name, signal), 1.0) * float(value), now_s)

    def drain(self, now_s: float) -> int:
        """Decode every frame waiting in the receive queue, without blocking. Returns the count."""
        n = 0
        while n < MAX_FRAMES_PER_CYCLE:
            msg = self.bus.recv(timeout=0)
            if msg is None:
                break
            self._decode(msg, now_s)
            n += 1
        return n

    def readings(self, now_s: float) -> dict[str, tuple[float, float, int]]:
        out = {}
        for point in POINTS:
            if point in self._values:
                value, t = self._values[point]
                if point == "voltage_v" and self.voltage_range and not (
                        self.voltage_range[0] <= value <= self.voltage_range[1]):
                    if not self.implausible:
                        log.warning("%s: pack voltage %.2f V outside %.0f-%.0f V: this frame cannot carry the "
                                    "pack's voltage (use a high-voltage BMS profile); shown as unknown",
                                    self.name, value, *self.voltage_range)
                    self.implausible += 1
                    out[point] = (math.nan, t, QUALITY_ERROR)
                    continue
                out[point] = (value, t, QUALITY_OK if now_s - t <= self.max_age_s else QUALITY_STALE)
            else:
                out[point] = (math.nan, now_s, QUALITY_STALE)
        return out

    # --- Device contract --------------------------------------------------------------------------
    def acquire(self, now_mono_s: float, sink: Sink) -> None:
        if self.bus is None and self._reopen.ready(time.monotonic()):
            self._open(time.monotonic())
        if self.bus is not None:
            try:
                self.drain(now_mono_s)
                if self.keepalive:
                    self.bus.send(can.Message(arbitration_id=KEEPALIVE_ID, data=bytes(8), is_extended_id=False))
            except (can.CanError, OSError, ValueError) as exc:
                log.warning("%s: CAN bus error: %s", self.name, exc)
                self._lost(exc)
        for point, (value, t, quality) in self.readings(now_mono_s).items():
            sink(self.name, point, value, t, quality)

    def comm_stats(self) -> dict:
        return {"frames": self.frames, "bad_frames": self.bad_frames,
                "open_error": str(getattr(self, "open_error", "") or "")}

    def actuate(self, commands: dict[str, float], now_mono_s: float) -> None:
        """A BMS takes no commands from the EMS; its limits flow the other way."""

    def close(self) -> None:
        if self._own_bus and self.bus is not None:
            self.bus.shutdown()
            self.bus = None
