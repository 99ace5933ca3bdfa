"""MQTT topic names of the uplink: ``edge-ems/v1/{site}/{gateway}/{kind}``.

Kinds published by the gateway: status (retained, last will "offline"), telemetry (1-min summaries),
interval (15-min carbon intervals), alarm, event, cmd/result, and the live compute signals (LIVE:
compute/headroom retained, compute/defer; MqttUplink.publish_live, not spooled). Subscribed: cmd, ack (the cloud's
end-to-end receipts, used with ``confirm=cloud``, see client.py), and the network inputs (INBOUND:
the compute platform's compute/power and compute/job, the cloud's market feed), handed to
controller/netinputs.py.
A backlog drained in batches goes to ``{kind}/batch`` (zlib-compressed JSON, see drain.py), so a cloud
consumer subscribes ``.../{kind}/#`` to get both the live records and the batches (``#`` also matches
the parent level).
"""
from __future__ import annotations

PREFIX = "edge-ems/v1"
STATUS, TELEMETRY, INTERVAL, ALARM, EVENT, CMD, CMD_RESULT, ACK = (
    "status", "telemetry", "interval", "alarm", "event", "cmd", "cmd/result", "ack")
# Spooled record kinds, in drain priority order: live alarms go first, telemetry last.
RECORD_KINDS = (ALARM, CMD_RESULT, EVENT, INTERVAL, TELEMETRY)
NEVER_DROPPED = (ALARM, CMD_RESULT, EVENT, INTERVAL)
BATCH_SUFFIX = "/batch"
INBOUND = ("compute/power", "compute/job", "market")    # drivers/compute.py INBOUND, drivers/market.py KIND
INBOUND_QOS = {"compute/power": 0, "compute/job": 1, "market": 1}
# Live outbound signals (drivers/compute.py OUTBOUND): published as they come while connected, never spooled
# (a green headroom an hour old is wrong, not late); kind -> (qos, retained).
LIVE = {"compute/headroom": (1, True), "compute/defer": (1, False)}
LIVE_MAX_BYTES = 64 * 1024


def _check_level(name: str, value: str) -> str:
    if not value or any(c in value for c in "/+#\0"):
        raise ValueError(f"{name} {value!r} cannot be an MQTT topic level (empty, or has / + # NUL)")
    return value


class Topics:
    def __init__(self, site: str, gateway: str):
        self.site = _check_level("site", site)
        self.gateway = _check_level("gateway", gateway)
        self.base = f"{PREFIX}/{site}/{gateway}"

    def __call__(self, kind: str) -> str:
        return f"{self.base}/{kind}"

    def batch(self, kind: str) -> str:
        return f"{self.base}/{kind}{BATCH_SUFFIX}"

    @property
    def status(self) -> str:
        return self(STATUS)

    @property
    def cmd(self) -> str:
        return self(CMD)

    @property
    def ack(self) -> str:
        return self(ACK)

    def kind_of(self, topic: str) -> tuple[str, bool]:
        """(kind, is_batch) of one of our topics; ValueError for a foreign topic."""
        if not topic.startswith(self.base + "/"):
            raise ValueError(f"not a topic of {self.base}: {topic}")
        rest = topic[len(self.base) + 1:]
        if rest.endswith(BATCH_SUFFIX) and rest[:-len(BATCH_SUFFIX)] in RECORD_KINDS:
            return rest[:-len(BATCH_SUFFIX)], True
        return rest, False
