"""A device read or a bus scan over the controller's own Modbus bus, under its lock: the cycle then
waits at most one transaction (read) or two short probes (scan), and no second process opens the port."""
from __future__ import annotations

import math
import time

from controller.points import CATALOGUE, Q_OK


class _Unattached:
    """The controller's bus for a one-off read: same port and lock, but the probe device is not added
    to the bus's cycle."""

    def __init__(self, bus):
        self._bus = bus
        self.url = getattr(bus, "url", "?")

    def read(self, *a, **kw):
        return self._bus.read(*a, **kw)

    def attach(self, device) -> None:
        pass

    def detach(self, device) -> None:
        pass



class FieldAccess:
    """Mixed into :class:`controller.ipc.server.IpcServer`."""

    def _loop_device(self, name: str):
        loop = self.loop
        if loop is None:
            raise ValueError("controller not running yet")
        known = [d["name"] for d in self.cfg["devices"]]
        if name not in known:
            raise ValueError(f"no device {name!r} in the site profile (known: {', '.join(known)})")
        return loop.devices.get(name)

    def device_read(self, name: str) -> dict:
        """Every point of a Modbus device's profile read now, over the controller's own bus (its lock
        serialises us with the cycle's reads: the cycle waits at most one transaction). A device with
        no Modbus bus (simulated, CAN) answers with what the process image holds for it."""
        dev = self._loop_device(name)
        t0 = time.perf_counter()
        bus = getattr(dev, "bus", None)
        if bus is not None and hasattr(bus, "read") and hasattr(dev, "profile") and hasattr(dev, "unit"):
            from drivers.modbus.device import ModbusDevice
            probe = ModbusDevice(name, dev.profile, _Unattached(bus), dev.unit, emit_extras=True)
            probe.poll(0.0)
            if not probe.placed or probe.backoff.active:
                raise ConnectionError(f"unit {dev.unit} on {bus.url} did not answer")
            _fast, slow = probe.blocks()
            for i in range(1, len(slow)):
                probe.poll(float(i))
            values = {k: round(v, 4) for k, (v, _t, q) in probe.readings(float(len(slow))).items()
                      if q == Q_OK and math.isfinite(v)}
            source = f"modbus unit {dev.unit}"
        else:
            pub = self._pub
            if pub is None:
                raise ValueError("no cycle has run yet")
            idxs = sorted(i for (d, _p), i in self.loop.builder.slot.items() if d == name)
            values = {CATALOGUE[i].name: round(float(pub[3][i]), 4) for i in idxs if pub[4][i] == Q_OK}
            source = "image: no Modbus bus (simulated or CAN device)"
        return {"device": name, "source": source, "values": values,
                "ms": round((time.perf_counter() - t0) * 1000.0, 1)}

    def bus_scan(self, bus_name: str, units: list[int]) -> dict:
        """Unit ids answering a one-register read on a Modbus bus the controller holds. A probe holds the
        bus lock for at most 2 x 0.1 s (+ the late-reply guard), so the cycle waits at most that long."""
        buses = self.cfg["buses"]
        held = {}                                   # profile bus name -> the ModbusBus the loop polls
        for d in self.cfg["devices"]:
            bus = getattr(self._loop_device(d["name"]), "bus", None)
            if bus is not None and hasattr(bus, "read"):
                held.setdefault(d["bus"], bus)
        if not bus_name:                            # the first Modbus bus this controller holds
            if not held:
                raise ValueError("this controller holds no Modbus port (all devices simulated or CAN): "
                                 "nothing to scan")
            bus_name = next(iter(held))
        if bus_name not in buses:
            raise ValueError(f"no bus {bus_name!r} in the site profile (known: {', '.join(buses)})")
        bus = held.get(bus_name)
        if bus is None:
            raise ValueError(f"bus {bus_name} ({buses[bus_name]['kind']}) has no Modbus port open in this "
                             f"controller (held: {', '.join(held) or 'none'}): nothing to scan")
        on_bus = [d for d in self.cfg["devices"] if d["bus"] == bus_name
                  and getattr(self._loop_device(d["name"]), "bus", None) is bus]
        import minimalmodbus
        from drivers.modbus.bus import LINE_FAULTS
        t0 = time.perf_counter()
        found = []
        for unit in units:
            try:
                bus.read(unit, 3, 0, 1, timeout_s=0.1, retries=1)
            except minimalmodbus.SlaveReportedException:
                pass
            except LINE_FAULTS:
                continue
            found.append(unit)
        expected = sorted(int(d["unit"]) for d in on_bus if d.get("unit") is not None and int(d["unit"]) in units)
        return {"bus": bus_name, "port": getattr(bus, "url", "?"), "found": found,
                "missing": [u for u in expected if u not in found],
                "ms": round((time.perf_counter() - t0) * 1000.0, 1)}
