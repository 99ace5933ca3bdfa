"""DCIM writes: the cloud commands' limits and audit, reached over Modbus.

A write to a `rw` register of the map becomes the cloud command it stands for (mode -> `mode`, reserve ->
`reserve_soc`, battery setpoint -> `setpoint_schedule` with one slot of `[dcim] setpoint_hold_s`) and goes
the cloud's way after the signature and replay checks, which a Modbus peer cannot pass and does not need
(it is on the DCIM network, docs/dcim.md "Security"):

- the limits: `CommandVerifier._check_args` of the uplink (controller/uplink/commands.py; the site
  profile's SOC window, charge/discharge kW, the mode names), the one function the cloud's commands pass;
- the verdict: `cmd/result` and an `event` in the uplink's spool and `Uplink.verdicts`, as
  `Uplink.handle_command` records a cloud verdict, with `"source": "dcim"`, the peer and the register;
- an accepted command is queued on `Uplink.accepted` and applied between cycles by the uplink hook
  (`Uplink.apply`: the operator inputs, `command_applied`), where the interlocks still clamp every setpoint.

Modbus answers (docs/dcim.md): writes disabled, or an address that is not writable -> ILLEGAL_DATA_ADDRESS
(0x02, as OpenEMS's read-only API answers); beyond a limit, or the not-available pattern -> ILLEGAL_DATA_VALUE
(0x03); a write by another function than FC6/FC16 -> ILLEGAL_FUNCTION (0x01); more than WRITES_PER_MIN
write attempts a minute -> SERVER_DEVICE_BUSY (0x06), counted, not applied. What a peer sends must not grow
the spool without bound (its events are never evicted): every accepted write is audited, a refusal only the
first time its kind occurs in REFUSAL_AUDIT_S, the next audited one saying how many were `repeated`.
Runs in the server thread; never raises into pymodbus.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter

from controller.dcim.regmap import RegisterMap, decode

log = logging.getLogger("edge_ems.dcim")
WRITES_PER_MIN = 120       # a DCIM refreshing a setpoint every 30-60 s writes 1-2 a minute
REFUSAL_AUDIT_S = 60.0
WRITE_FCS = (6, 16)
# Modbus exception codes (pymodbus.constants.ExcCodes values; named here so this module needs no pymodbus)
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE, DEVICE_BUSY = 0x01, 0x02, 0x03, 0x06


class WriteGate:
    def __init__(self, rmap: RegisterMap, *, enabled: bool, uplink=None, setpoint_hold_s: float = 60.0,
                 clock=time.time, writes_per_min: int = WRITES_PER_MIN):
        self.requested = bool(enabled)
        self.enabled = bool(enabled and uplink is not None)
        self.uplink = uplink
        self.hold_s = float(setpoint_hold_s)
        self.clock = clock
        self.by_address = {r.address: r for r in rmap.registers if r.writable}
        self.writes_per_min = writes_per_min
        self.counts: Counter = Counter()
        self.busy = 0                             # refused as busy since the last audited record
        self._refusal_at: dict[str, float] = {}   # kind of refusal -> when it was last audited
        self._repeated: Counter = Counter()
        self._window = (0.0, 0)
        self._seq = 0
        self._boot = uuid.uuid4().hex[:8]           # ids stay unique across restarts in the cloud's audit
        self._lock = threading.Lock()

    def _now(self) -> float:
        up = self.uplink
        t = getattr(up, "now_s", None) if up is not None else None
        return float(t) if t is not None else self.clock()     # the controller's UTC, as for cloud commands

    def _admit(self) -> bool:
        """At most writes_per_min write attempts a minute are looked at."""
        start, n = self._window
        now = time.monotonic()
        if now - start >= 60.0:
            start, n = now, 0
        if n >= self.writes_per_min:
            self._window = (start, n)
            return False
        self._window = (start, n + 1)
        return True

    def handle(self, fc: int, address: int, words: list[int], peer: str) -> int | None:
        """None (accepted, queued) or the Modbus exception code."""
        with self._lock:
            try:
                return self._handle(fc, address, words, peer)
            except Exception as exc:              # noqa: BLE001 - a defect here refuses the write, nothing more
                log.exception("dcim write")
                self.counts["error"] += 1
                self._refuse("error", None, None, f"not applied: {type(exc).__name__}", peer, address)
                return ILLEGAL_VALUE

    def _handle(self, fc: int, address: int, words: list[int], peer: str) -> int | None:
        if not self._admit():
            self.counts["busy"] += 1
            self.busy += 1
            return DEVICE_BUSY
        regs = [self.by_address.get(a) for a in range(address, address + len(words))]
        if not self.enabled:
            why = "[dcim] writes = false" if not self.requested else "no uplink to audit them"
            self._refuse("disabled", None, None, f"refused: writes disabled ({why})", peer, address)
            return ILLEGAL_ADDRESS
        if fc not in WRITE_FCS:
            self._refuse("function", None, None, f"refused: function {fc} (writes are FC6 or FC16)", peer, address)
            return ILLEGAL_FUNCTION
        if any(r is None for r in regs):
            self._refuse("address", None, None, f"refused: address {address}..{address + len(words) - 1} is not "
                         "writable", peer, address)
            return ILLEGAL_ADDRESS
        now = self._now()
        commands = []
        for reg, word in zip(regs, words):
            value = decode(reg, [word])
            kind, args = self._command(reg, value, word, now)
            try:
                if value is None:
                    raise ValueError("out of limits: the not-available pattern is no value")
                self.uplink.verifier._check_args(kind, args, now)   # the cloud's limits (commands.py)
            except Exception as exc:                               # Refused (or a check's ValueError)
                self._refuse("limits", kind, reg, str(exc)[:200], peer, reg.address, value)
                return ILLEGAL_VALUE
            commands.append((reg, value, kind, args))
        for reg, value, kind, args in commands:                    # all or nothing
            body = self._audit(kind, reg, "accepted", "ok", peer, reg.address, value)
            self.uplink.accepted.append({"v": 1, "id": body["id"], "type": kind, "args": args, "source": "dcim"})
            self.counts["accepted"] += 1
        return None

    def _command(self, reg, value, word: int, now: float) -> tuple[str, dict]:
        if reg.write == "mode":
            code = int(word)
            return "mode", {"mode": reg.codes[code] if code < len(reg.codes) else f"code {code}"}
        if reg.write == "reserve_soc":
            return "reserve_soc", {"reserve_pct": value if value is not None else float("nan")}
        if reg.write == "battery_kw":
            return "setpoint_schedule", {"start_s": now, "step_s": self.hold_s,
                                         "battery_kw": [value if value is not None else float("nan")]}
        raise ValueError(f"register {reg.name}: unknown write {reg.write!r}")

    def _refuse(self, what: str, kind, reg, reason: str, peer: str, address: int, value=None) -> None:
        """Count a refusal; audit it unless one of the same kind was audited within REFUSAL_AUDIT_S."""
        self.counts[what] += 1
        now = time.monotonic()
        last = self._refusal_at.get(what)
        if last is not None and now - last < REFUSAL_AUDIT_S:
            self._repeated[what] += 1
            return
        self._refusal_at[what] = now
        body = self._audit(kind, reg, "refused", reason, peer, address, value, send=False)
        if self._repeated[what]:
            body["repeated"] = self._repeated.pop(what)
        self._send(body)

    def _audit(self, kind, reg, verdict: str, reason: str, peer: str, address: int, value=None,
               send: bool = True) -> dict:
        self._seq += 1
        body = {"id": f"dcim-{self._boot}-{self._seq}", "counter": None, "type": kind, "verdict": verdict, "reason": reason,
                "source": "dcim", "peer": str(peer)[:64], "register": reg.name if reg is not None else None,
                "address": int(address), "value": value}
        if self.busy:
            body["busy_refused"], self.busy = self.busy, 0
        if send:
            self._send(body)
        return body

    def _send(self, body: dict) -> None:
        """Where a cloud command's verdict goes (Uplink.handle_command): cmd/result, an event, verdicts."""
        up = self.uplink
        if up is None:
            return
        from controller.uplink.topics import CMD_RESULT, EVENT
        now = self._now()
        up.verdicts.append(body)
        up.spool.put(CMD_RESULT, now, body)
        up.spool.put(EVENT, now, {"event": "command", **body})

    def stats(self) -> dict:
        return {"enabled": self.enabled, **dict(self.counts)}
