"""The audit log: every login attempt, lockout and action with its outcome, kept in a bounded ring,
appended to an optional JSONL file and handed to listeners (the uplink's spool, so the cloud sees what
was done on site). A failing file or listener never stops the action it records."""
from __future__ import annotations

import json
import time

from controller.ipc.common import _Conn, _iso


class Audit:
    """Mixed into :class:`controller.ipc.server.IpcServer`."""

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

    def _audit_record(self, conn: _Conn | None, action: str, args: dict, ok: bool, message: str) -> dict:
        self._audit_seq += 1
        pub = self._pub
        rec = {"seq": self._audit_seq, "t_utc": _iso(time.time()), "t_s": pub[2] if pub else None,
               "cycle": pub[1] if pub else None, "who": conn.who if conn else "ipc", "action": action,
               "args": args, "ok": ok, "message": message}
        self.audit.append(rec)
        if self.audit_path is not None:
            try:
                with open(self.audit_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            except OSError:
                pass
        for fn in list(self.audit_listeners):
            try:
                fn(rec)
            except Exception:
                pass
        return rec
