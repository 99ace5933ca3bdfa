"""The technician's actions: PIN login with lockout, then ack / mode / battery setpoint / genset /
read / scan / export. Each goes through the operator inputs the step reads (the interlocks still clamp
it), the slow ones (read, scan, export) in a worker thread; every attempt, refused or not, is audited
(refusals of connections without a PIN session within a budget, past it counted by kind: see
controller/ipc/ratelimit.py). A refusal names the argument and shows at most ~40 characters of it."""
from __future__ import annotations

import os
import threading
import time

from controller.core import layout as L
from controller.ipc.common import _Conn, _f
from controller.ipc.pin import check_pin
from controller.ipc.request import RequestError, number, show


def _units(spec) -> list[int]:
    """"1-32" / "5" / 5 / [1, 2] -> sorted unit ids within 1..247. The bounds are checked before a
    range is expanded: "1-40000000" must be refused without building forty million ints."""
    bad = RequestError("units", f"units must look like 1-32, 5 or a list of integers within 1..247, "
                                f"got {str(spec)[:40]!r}")
    if isinstance(spec, (list, tuple)):
        if not spec or len(spec) > 247 or any(type(u) is not int or not 1 <= u <= 247 for u in spec):
            raise bad
        return sorted(set(spec))
    if type(spec) is int:
        a = b = spec
    elif isinstance(spec, str) and 0 < len(spec) <= 16:
        lo, sep, hi = spec.strip().partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise bad
        a = int(lo)
        b = int(hi) if sep else a
    else:
        raise bad
    if not 1 <= a <= b <= 247:
        raise bad
    return list(range(a, b + 1))


def _num(args: dict, key: str, lo: float, hi: float, default=None) -> float:
    """A number argument typed exactly (an int or a float, never a bool or a string), finite, in range;
    a huge integer is compared exactly, never converted (math.isfinite(10**400) raises OverflowError)."""
    return number(args, key, lo, hi, default)


KINDS = ("login", "lockout", "logout", "ack", "mode", "battery_kw", "genset", "read", "scan", "export")


class Actions:
    """Mixed into :class:`controller.ipc.server.IpcServer`."""

    def _login(self, conn: _Conn, pin: str) -> dict:
        now = time.monotonic()
        if not self.pin_hash:
            self._audit_record(conn, "login", {}, False, "no PIN configured", budget=True)
            return {"ok": False, "error": "no PIN configured in the site profile ([tui] pin_hash): actions disabled"}
        if now < self.locked_until:
            left = self.locked_until - now
            self._audit_record(conn, "login", {}, False, f"locked out ({left:.0f} s left)", budget=True)
            return {"ok": False, "locked_s": round(left), "error": f"locked out: try again in {left:.0f} s"}
        if check_pin(pin, self.pin_hash):
            self.failures = 0
            conn.session_until = now + self.session_s
            self._audit_record(conn, "login", {}, True, "PIN accepted")
            return {"ok": True, "session_s": self.session_s,
                    "message": f"PIN accepted: actions unlocked for {self.session_s / 60:.0f} min"}
        self.failures += 1
        if self.failures >= self.lockout_after:
            self.failures = 0
            self.locked_until = now + self.lockout_s
            self._audit_record(conn, "lockout", {}, False, f"{self.lockout_after} wrong PINs: locked {self.lockout_s:.0f} s")
            return {"ok": False, "locked_s": round(self.lockout_s),
                    "error": f"wrong PIN: locked out for {self.lockout_s:.0f} s"}
        left = self.lockout_after - self.failures
        self._audit_record(conn, "login", {}, False, f"wrong PIN ({left} tries left)")
        return {"ok": False, "tries_left": left, "error": f"wrong PIN ({left} {'try' if left == 1 else 'tries'} left)"}

    def _action(self, conn: _Conn, req: dict, reply: dict) -> None:
        sent = req.get("action")
        name = sent if isinstance(sent, str) and sent in KINDS else "unknown"   # the audit's kinds: a bounded set
        args = {k: v for k, v in req.items() if k not in ("op", "id", "action", "pin")}
        now = time.monotonic()
        if not (conn.session_until and now <= conn.session_until):
            self._audit_record(conn, name, args, False, "refused: no PIN session", budget=True)
            self._send(conn, {**reply, "action": name, "ok": False, "error": "PIN required"})
            return
        conn.session_until = now + self.session_s        # activity extends the session
        op = self.loop.operator if self.loop is not None else None
        if op is None:
            self._send(conn, {**reply, "action": name, "ok": False, "error": "controller not running yet"})
            return
        try:
            if name == "ack":
                if "bits" in args:
                    bits = args["bits"]
                elif "alarm" in args:
                    if not isinstance(args["alarm"], str) or args["alarm"] not in L.ALARM_NAMES:
                        raise RequestError("alarm", f"alarm must be one of {', '.join(L.ALARM_NAMES)}, "
                                                    f"got {show(args['alarm'])}")
                    bits = 1 << L.ALARM_NAMES.index(args["alarm"])
                else:
                    bits = int(self._pub[5][L.C_ALARMS_UNACKED]) if self._pub else 0
                try:
                    op.acknowledge(bits)                # validates the mask (type, range) first
                except ValueError as exc:
                    raise RequestError("bits", str(exc)) from None
                names = [n for i, n in enumerate(L.ALARM_NAMES) if bits >> i & 1]
                msg = f"acknowledged {', '.join(names)}" if names else "nothing to acknowledge"
                result = {"ok": True, "bits": bits, "message": msg}
            elif name == "mode":
                mode = args.get("mode")
                if not isinstance(mode, str) or mode not in ("auto", "manual", "standby"):
                    raise RequestError("mode", f"mode must be one of auto, manual, standby, got {show(mode)}")
                if mode == "manual" and self._pub is not None:
                    op.set_battery_kw(float(self._pub[5][L.C_BATTERY_KW]))     # bumpless
                op.set_mode(mode)
                result = {"ok": True, "message": f"mode {mode} requested"}
            elif name == "battery_kw":
                kw = _num(args, "kw", -1e6, 1e6)
                op.set_battery_kw(kw)
                manual = op.mode == L.OP_MANUAL
                result = {"ok": True, "kw": kw, **self._clamp_preview(kw)}
                result["message"] = (f"setpoint {kw:+.1f} kW" + result.pop("note")
                                     + ("" if manual else " (applies in manual mode)"))
            elif name == "genset":
                run = args.get("run")
                if run is not None and type(run) is not bool:       # "no" is a non-empty, truthy string
                    raise RequestError("run", f"run must be true, false or null (automatic), got {show(run)}")
                op.set_genset(run)
                result = {"ok": True, "message": {None: "genset back to automatic", True: "genset start requested",
                                                  False: "genset stop requested"}[run]}
            elif name == "export":
                hours = _num(args, "hours", 0.0, 24 * 7, default=2.0)
                if hours <= 0:
                    raise RequestError("hours", "hours must be in (0, 168]")
                self._audit_record(conn, "export", args, True, "started")
                threading.Thread(target=self._export_worker, args=(conn, reply, hours), daemon=True).start()
                return
            elif name in ("read", "scan"):
                target = args.get("device" if name == "read" else "bus", "")
                if not isinstance(target, str) or len(target) > 64:
                    field = "device" if name == "read" else "bus"
                    raise RequestError(field, f"{field} must be a name (a string of at most 64 characters), "
                                              f"got {show(target)}")
                units = _units(args.get("units", "1-32")) if name == "scan" else None
                self._audit_record(conn, name, args, True, "started")
                threading.Thread(target=self._field_worker, args=(conn, reply, name, target, units),
                                 daemon=True).start()
                return
            else:
                raise RequestError("action", f"action must be one of ack, mode, battery_kw, genset, read, scan, "
                                             f"export, got {show(sent)}")
        except (ValueError, KeyError, TypeError, IndexError, ArithmeticError) as exc:
            result = {"ok": False, "error": str(exc)[:200]}
            if isinstance(exc, RequestError):
                result["field"] = exc.field
        self._audit_record(conn, str(name), args, result["ok"], result.get("message") or result.get("error", ""))
        self._send(conn, {**reply, "action": name, **result})

    def _export_worker(self, conn: _Conn, reply: dict, hours: float) -> None:
        try:
            files = self.export(hours)
            result = {"ok": True, "files": [str(f) for f in files],
                      "message": f"exported {len(files)} files ({hours:g} h) to {files[0].parent}"}
        except Exception as exc:
            result = {"ok": False, "error": f"export failed: {str(exc)[:200]}"}
        self._audit_record(conn, "export", {"hours": hours}, result["ok"], result.get("message") or result["error"])
        self._done.put((conn, {**reply, "action": "export", **result}))
        try:
            os.write(self._wake_w, b"d")
        except OSError:
            pass

    def _clamp_preview(self, kw: float) -> dict:
        """What the interlocks will make of a manual setpoint, from the limits of the last cycle: the
        technician hears about a clamp at once, the snapshot's "manual" then shows what was applied."""
        pub = self._pub
        if pub is None:
            return {"note": ""}
        cmd = pub[5]
        if kw > 0 and kw > float(cmd[L.C_DISCHARGE_LIMIT_KW]) + 1e-9:
            lim, why = float(cmd[L.C_DISCHARGE_LIMIT_KW]), L.reason_name(cmd[L.C_DISCHARGE_REASON])
        elif kw < 0 and -kw > float(cmd[L.C_CHARGE_LIMIT_KW]) + 1e-9:
            lim, why = -float(cmd[L.C_CHARGE_LIMIT_KW]), L.reason_name(cmd[L.C_CHARGE_REASON])
        else:
            return {"clamped": False, "note": ": within the present limits"}
        return {"clamped": True, "limit_kw": _f(lim), "reason": why,
                "note": f": beyond the limit, CLAMPED to {lim:+.1f} kW by {why}"}   # <= 79 columns

    def _field_worker(self, conn: _Conn, reply: dict, name: str, target: str, units) -> None:
        """A device read or a bus scan, off the cycle and off the socket thread (they take seconds)."""
        try:
            if name == "read":
                out = self.device_read(target)
                shown = ", ".join(f"{k}={v:g}" for k, v in list(out["values"].items())[:6])
                result = {"ok": True, **out, "message": f"read {target} ({out['source']}, {out['ms']:.0f} ms): "
                          f"{len(out['values'])} points" + (f": {shown}" if shown else "")}
            else:
                out = self.bus_scan(target, units)
                result = {"ok": True, **out, "message": f"scan {out['bus']} units {units[0]}-{units[-1]} "
                          f"({out['ms']:.0f} ms): answering {out['found'] or 'none'}"
                          + (f"; profile units missing {out['missing']}" if out["missing"] else "")}
        except Exception as exc:
            result = {"ok": False, "error": f"{name} {target}: {str(exc)[:200]}"}
        self._audit_record(conn, name, {"device" if name == "read" else "bus": target}, result["ok"],
                           result.get("message") or result["error"])
        self._done.put((conn, {**reply, "action": name, **result}))
        try:
            os.write(self._wake_w, b"d")
        except OSError:
            pass
