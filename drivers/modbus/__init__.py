"""Modbus RTU field I/O: TOML register maps, decoding, block planning, a bus scheduler per port.

Public entry points: :func:`load_profile`, :class:`ModbusBus`, :class:`ModbusDevice`, :func:`open_device`.
"""
from drivers.modbus.profile import DeviceProfile, PointSpec, ProfileError, load_profile, profile_path
from drivers.modbus.bus import ModbusBus, get_bus
from drivers.modbus.device import ModbusDevice, open_device

__all__ = [
    "DeviceProfile", "PointSpec", "ProfileError", "load_profile", "profile_path",
    "ModbusBus", "get_bus", "ModbusDevice", "open_device",
]
