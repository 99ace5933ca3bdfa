"""The local socket the technician TUI and tools attach to (a Unix socket, line-delimited JSON).

The controller never depends on anything here: the scan cycle only calls :meth:`IpcServer.hook`, which
does a few in-memory updates and, while a client is attached, at most ``publish_hz`` times a wall-clock
second hands copies of the image and commands to the server thread (an atomic reference swap and a
non-blocking wake byte). All socket I/O, JSON and PIN hashing run in the server thread, and only once
the loop has counted the cycle that woke it (so the snapshot never takes the GIL from the cycle's later
hooks); a client that reads slowly is skipped (it gets fewer snapshots), one that stalls with a full
buffer is dropped, a dead one is closed. Nothing a client does can block the cycle. A device read or
bus scan uses the controller's own Modbus bus under its lock: the cycle then waits at most one
transaction.

Protocol (one JSON object per line, UTF-8, each way):

    server -> {"type": "hello", "version": 1, "site": {...}, "points": [...], "alarms": [...], ...}
    client -> {"op": "subscribe", "hz": 2}            snapshots at <= hz (<= publish_hz)
    server -> {"type": "snapshot", "seq": N, "cycle": C, "t_s": T, "points": {name: [value, q]}, ...}
    client -> {"op": "snapshot", "id": 1}             one snapshot now (reply carries the id)
    client -> {"op": "history", "id": 2}              1-min history ring (SOC and flows) for charts
    client -> {"op": "login", "pin": "1234", "id": 3} a session bound to this connection
    client -> {"op": "action", "action": "mode", "mode": "manual", "id": 4}
    server -> {"type": "result", "id": 4, "ok": true, "message": "...", ...}
    client -> {"op": "logout"} | {"op": "audit", "since": SEQ, "n": 20, "id": 5}   records whole, seq > since

Every request is typed exactly (controller/ipc/request.py): a bad one gets {"ok": false, "field": ...,
"error": "..."} naming the field; a line over MAX_LINE closes the connection. Connections without a PIN
session are rate-limited, each and all together (controller/ipc/ratelimit.py): {"ok": false, "error":
"rate limited: ..."}; snapshots subscribed to are never limited.

Actions (a session is required; every attempt, refused or not, goes to the audit log):
    ack {"bits": MASK} or {"alarm": NAME} or {} (all unacknowledged) -> OperatorInputs.acknowledge
    mode {"mode": "auto"|"manual"|"standby"}  (entering manual starts from the present battery command)
    battery_kw {"kw": X}                      (+ discharge / - charge; used in manual mode; the
                                               interlocks clamp it, the snapshot's "manual" says how)
    genset {"run": true|false|null}           (null: back to automatic)
    read {"device": NAME}                     every point of a Modbus device read now over the
                                              controller's bus (image values for simulated/CAN ones)
    scan {"bus": NAME, "units": "1-32"}       unit ids answering on a Modbus bus the controller holds
    export {"hours": H}                       the last H hours of the recording as CSV, the signed carbon
                                              ledger (whole, with its .pub) and the audit log, into the
                                              export directory; the reply names the files

The audit log (``IpcServer.audit``, ``audit_listeners`` and an optional JSONL file) is what the uplink
forwards: every login attempt, lockout and action with its outcome (refusals of connections without a
session within a budget, past it counted by kind). A snapshot's "audit" holds only the server-made
fields of the last 20 records (seq, time, who, kind, ok, refusal count); the audit op has them whole.

The package by job: paths (where the socket lives), pin (PIN hashes), common (limits, the connection
record, number formatting), request (parsing and typing a request line), ratelimit (token buckets and
their numbers), server (the socket thread, connections, requests, publishing), cycle (the
hook the scan cycle calls), snapshot (hello, snapshots, history, carbon), actions (login and the
technician's actions), field (device read, bus scan), export, audit, client (IpcClient), run (the
socket of `edge-ems run`). Every name the single module had is importable from here.
"""
from controller.ipc.actions import _units
from controller.ipc.client import IpcClient
from controller.ipc.common import (DROP_ABOVE, EXPORT_RING_N, EXPORT_RING_STEP_S, EXPORT_TAIL_N, HISTORY_FIELDS,
                                   HISTORY_N, HISTORY_STEP_S, MAX_LINE, PLAN_FIELDS, PLAN_SLOTS, PROTOCOL_VERSION,
                                   SKIP_ABOVE, _Conn, _f, _iso, _stats_copy)
from controller.ipc.field import _Unattached
from controller.ipc.paths import client_socket_path, default_socket_path
from controller.ipc.pin import check_pin, hash_pin
from controller.ipc.run import start_ipc_for_run
from controller.ipc.server import IpcServer, start_ipc
# the single module's own imports were importable from it too; kept so that nothing that used them breaks
from controller.core import layout as L
from controller.points import CATALOGUE, INDEX, Q_ERROR, Q_OK

__all__ = ["IpcClient", "IpcServer", "check_pin", "client_socket_path", "default_socket_path", "hash_pin",
           "start_ipc", "start_ipc_for_run", "PROTOCOL_VERSION", "MAX_LINE", "SKIP_ABOVE", "DROP_ABOVE",
           "HISTORY_STEP_S", "HISTORY_N", "HISTORY_FIELDS", "EXPORT_RING_STEP_S", "EXPORT_RING_N", "EXPORT_TAIL_N",
           "PLAN_FIELDS", "PLAN_SLOTS", "L", "CATALOGUE", "INDEX", "Q_ERROR", "Q_OK",
           "_Conn", "_Unattached", "_units", "_stats_copy", "_iso", "_f"]
