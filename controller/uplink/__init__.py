"""MQTT uplink with a durable store-and-forward spool and signed cloud commands (issue 6).

spool.py (SQLite WAL), client.py (paho-mqtt 2.x), topics.py, drain.py (batches, zlib, rate limit),
commands.py (Ed25519), summary.py (1-min / 15-min), hook.py (make_uplink_hook), schemas/*.json,
worker.py (the MQTT side as a process of its own) and proc.py (the controller's handle on it).
"""


def make_uplink_hook(*args, **kwargs):
    from controller.uplink.hook import make_uplink_hook as _make
    return _make(*args, **kwargs)
