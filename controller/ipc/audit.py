"""The audit log: every login attempt, lockout and action with its outcome, kept in a bounded ring,
appended to an optional JSONL file and handed to listeners (the uplink's spool, so the cloud sees what
was done on site). A failing file or listener never stops the action it records.

Refusals of connections without a PIN session (anyone on the socket can make them) are records only
within a budget (controller/ipc/ratelimit.py ``AUDIT_UNAUTH_*``); past it they are counted by kind, and
the next record of that kind says how many were counted meanwhile (``suppressed``). Snapshots carry
only the server-made fields of the last records (:func:`brief`); the records whole, with their
(bounded) messages and arguments, are the ``audit`` op's."""
from __future__ import annotations

import json
import os
import time

from controller.ipc.actions import KINDS
from controller.ipc.common import _Conn, _iso


AUDIT_MAX_BYTES = 1_000_000     # audit.jsonl rotates to audit.jsonl.1 (one kept) past this size
ARG_MAX_CHARS = 200             # an accepted action's argument longer than this is cut
ARGS_MAX = 8
MESSAGE_MAX_CHARS = 300
AUDIT_KINDS = frozenset(KINDS) | {"unknown", "ipc_error"}


def brief(rec: dict) -> dict:
    """What a snapshot carries of an audit record: only what the server made (sequence, time, who from
    the socket's peer credentials, the kind from a bounded set, outcome, refusal count), nothing a
    client chose: the messages quote (bounded) client values, the arguments are the client's."""
    out = {k: rec[k] for k in ("seq", "t_utc", "t_s", "cycle", "who", "ok")}
    out["action"] = rec["action"] if rec["action"] in AUDIT_KINDS else "other"
    if "refused" in rec:
        out["refused"] = rec["refused"]
    return out


def _bounded_args(args: dict) -> dict:
    """An accepted action's arguments, bounded: the client chose their number and size."""
    out = {}
    for k, v in list(args.items())[:ARGS_MAX]:
        k = str(k)[:40]
        if v is None or type(v) in (bool, int, float) and len(repr(v)) <= 40:
            out[k] = v
        elif isinstance(v, str) and len(v) <= ARG_MAX_CHARS:
            out[k] = v
        else:
            out[k] = f"<{type(v).__name__} cut>"
    return out


class Audit:
    """Mixed into :class:`controller.ipc.server.IpcServer`. A refusal is recorded by its kind and a
    running count per kind, never with its arguments: anyone on the socket can send a refused action,
    and what they send must not grow the log, the spool or the snapshots."""

    audit_max_bytes = AUDIT_MAX_BYTES

    def attach_uplink(self, uplink) -> None:
        """Show the uplink on the uplink screen and forward every audit record (logins, lockouts,
        actions and their outcome) into its spool as an event, so the cloud sees what was done on site."""
        self.uplink = uplink
        spool = getattr(uplink, "spool", None)
        if spool is None:
            return
        from controller.uplink.topics import EVENT

        def forward(rec: dict) -> None:
            t = rec["t_s"] if rec.get("t_s") is not None else time.time()
            spool.put(EVENT, t, {"event": "tui_" + rec["action"], "value": {
                k: rec[k] for k in ("seq", "who", "args", "ok", "message")}})
        self.audit_listeners.append(forward)

    def _audit_record(self, conn: _Conn | None, action: str, args: dict, ok: bool, message: str,
                      budget: bool = False) -> dict | None:
        """One audit record (None when `budget` - a refusal of a connection without a session - finds
        the budget spent: it is then only counted)."""
        with self._audit_lock:
            return self._audit_record_locked(conn, action, args, ok, message, budget)

    def _audit_record_locked(self, conn, action, args, ok, message, budget) -> dict | None:
        pub = self._pub
        action = str(action)[:40]
        counts = self.audit_refused
        if not ok:
            if action not in counts and len(counts) >= 32:        # kinds are a bounded set; the rest pool
                action = "other"
            counts[action] = counts.get(action, 0) + 1
        if budget and not ok and not self._audit_bucket.take(time.monotonic()):
            self.audit_suppressed[action] = self.audit_suppressed.get(action, 0) + 1
            self.stats["audit_suppressed"] += 1
            return None
        self._audit_seq += 1
        rec = {"seq": self._audit_seq, "t_utc": _iso(time.time()), "t_s": pub[2] if pub else None,
               "cycle": pub[1] if pub else None, "who": str(conn.who if conn else "ipc")[:80], "action": action,
               "args": _bounded_args(args) if ok else {}, "ok": ok, "message": str(message)[:MESSAGE_MAX_CHARS]}
        if not ok:
            rec["refused"] = counts[action]
            held = self.audit_suppressed.pop(action, 0)
            if held:
                rec["suppressed"] = held              # refusals counted, not recorded, since the last one
        self.audit.append(rec)
        self._audit_briefs.append(brief(rec))
        if self.audit_path is not None:
            try:
                line = json.dumps(rec) + "\n"
                try:
                    if os.path.getsize(self.audit_path) + len(line) > self.audit_max_bytes:
                        os.replace(self.audit_path, str(self.audit_path) + ".1")
                except FileNotFoundError:
                    pass
                with open(self.audit_path, "a") as f:
                    f.write(line)
            except (OSError, ValueError):
                pass
        for fn in list(self.audit_listeners):
            try:
                fn(rec)
            except Exception:
                pass
        return rec
