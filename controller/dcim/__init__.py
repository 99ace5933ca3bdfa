"""The data-centre side reads us too: a Modbus TCP server a DCIM or SCADA system polls (docs/dcim.md).

Kept light on import: controller/config.py imports `controller.dcim.config` for the `[dcim]` table, so
nothing here loads pymodbus or numpy until a server is started (`controller.dcim.run.start_dcim`).
"""
