"""The two kinds of Modbus failure every caller distinguishes, whatever bus carried the request.

"The device answered" (an exception reply: it is there but refuses this request; retrying is pointless
and the device is not backed off) and "nobody answered" (timeout, garbled frame, port or connection gone:
worth a retry, then a backoff). The RTU bus gets them from minimalmodbus; the TCP bus and a port that is
not open raise the subclasses below, so ModbusDevice, SunSpec discovery and the scan commands catch one
set of classes for both buses.
"""
from __future__ import annotations

import minimalmodbus

# Exception responses: the device is alive and answered; retrying the same request is pointless.
DEVICE_ANSWERED = (minimalmodbus.SlaveReportedException,)
# No or broken answer: worth a retry, and the line may still carry a late or partial reply.
LINE_FAULTS = (minimalmodbus.NoResponseError, minimalmodbus.InvalidResponseError, minimalmodbus.LocalEchoError)

# Modbus exception codes a TCP gateway sends for the serial unit behind it that did not answer: the unit
# is absent, which is a line fault, not an answer (MODBUS Application Protocol v1.1b3, section 7).
GATEWAY_PATH_UNAVAILABLE, GATEWAY_TARGET_NO_RESPONSE = 0x0A, 0x0B


class ExceptionReply(minimalmodbus.SlaveReportedException):
    """The unit answered a request with a Modbus exception ``code``."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class NoAnswer(minimalmodbus.NoResponseError):
    """No (valid) reply within the timeout, or a gateway saying its target did not answer."""


class NotConnected(minimalmodbus.NoResponseError):
    """The port or connection is not open (unplugged adapter, refused connection); reopening is backed off."""
