"""What a client is sent: the hello (site, limits, catalogues), the snapshot built from the cycle's
copies, the history ring and the carbon figures read from the ledger file. Built in the server thread,
after the loop has counted the cycle, never in the cycle."""
from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path

from controller.core import layout as L
from controller.ipc.common import HISTORY_FIELDS, HISTORY_N, HISTORY_STEP_S, PLAN_FIELDS, PROTOCOL_VERSION, _f, _iso
from controller.points import CATALOGUE, INDEX, Q_OK


def _bus_where(bus: dict) -> str:
    """What a technician recognises a bus by: the serial port, host:port of a Modbus TCP device, the CAN channel."""
    kind = bus["kind"]
    if kind == "modbus_tcp":
        return f"{bus.get('host', '')}:{bus['port']}"
    if kind == "can":
        return f"{bus.get('interface', '')} {bus.get('channel', '')}".strip()
    return str(bus.get("port", ""))


class Snapshots:
    """Mixed into :class:`controller.ipc.server.IpcServer`."""

    def _hello(self) -> dict:
        cfg = self.cfg
        from controller.alarms import catalogue
        try:
            alarms = [{"bit": a.bit, "name": a.name, "severity": a.severity, "latching": a.latching,
                       "text": a.text, "check": a.check} for a in catalogue().values()]
        except Exception:
            alarms = [{"bit": i, "name": n, "severity": "warning", "latching": False, "text": n, "check": ""}
                      for i, n in enumerate(L.ALARM_NAMES)]
        bat = cfg["battery"]
        return {
            "type": "hello", "version": PROTOCOL_VERSION,
            "site": {"name": cfg["site"]["name"], "gateway_id": cfg["site"]["gateway_id"],
                     "timezone": cfg["site"]["timezone"], "period_s": cfg["control"]["period_s"],
                     "strategy": cfg["control"]["strategy"]},
            "limits": {"capacity_kwh": bat["capacity_kwh"], "charge_max_kw": bat["charge_max_kw"],
                       "discharge_max_kw": bat["discharge_max_kw"], "soc_min_pct": bat["soc_min_pct"],
                       "soc_max_pct": bat["soc_max_pct"], "reserve_pct": bat["reserve_pct"],
                       "cell_v_max": bat["cell_v_max"], "cell_v_min": bat["cell_v_min"],
                       "cells_series": bat["cells_series"], "pcs_rated_kw": cfg["pcs"]["rated_kw"],
                       "pv_rated_kw": cfg.get("pv", {}).get("rated_kw", 0.0),
                       "grid_import_max_kw": cfg["grid"]["import_max_kw"],
                       "genset_rated_kw": (cfg.get("genset") or {}).get("rated_kw", 0.0)},
            "points": [{"name": p.name, "unit": p.unit, "role": p.role} for p in CATALOGUE],
            "commands": list(L.COMMAND_NAMES), "modes": list(L.MODE_NAMES), "reasons": list(L.LIMIT_REASONS),
            "events": {str(k): v for k, v in L.EVENT_NAMES.items()},
            "alarms": alarms,
            "devices": [{"name": d["name"], "role": d["role"], "bus": d["bus"], "profile": d["profile"],
                         "simulated": d["simulated"]} for d in cfg["devices"]],
            "buses": {k: {"kind": b["kind"], "port": _bus_where(b), "baud": b["baud"]} for k, b in cfg["buses"].items()},
            "pin": {"configured": bool(self.pin_hash), "lockout_after": self.lockout_after,
                    "lockout_s": self.lockout_s, "session_s": self.session_s},
            "publish_hz": self.publish_hz,
        }

    def _devices(self, stamp, now_mono, quality, err_cycles, stale_cycles) -> list[dict]:
        loop = self.loop
        out = []
        by_device: dict[str, list[int]] = {}
        for (dev, _point), idx in loop.builder.slot.items():
            by_device.setdefault(dev, []).append(idx)
        for d in self.cfg["devices"]:
            name = d["name"]
            idxs = sorted(by_device.get(name, []))
            last = max((stamp[i] for i in idxs), default=-math.inf)
            entry = {"name": name, "role": d["role"], "bus": d["bus"], "points": len(idxs),
                     "ok": sum(1 for i in idxs if quality[i] == Q_OK),
                     "last_good_age_s": _f(now_mono - last) if math.isfinite(last) else None,
                     "stale": [CATALOGUE[i].name for i in idxs if quality[i] != Q_OK],
                     "error_cycles": int(sum(err_cycles[i] for i in idxs)),
                     "stale_cycles": int(sum(stale_cycles[i] for i in idxs)), "counters": {}}
            dev = loop.devices.get(name)
            for attr in ("frames", "bad_frames", "reads", "errors", "timeouts"):
                val = getattr(dev, attr, None)
                if isinstance(val, (int, float)):
                    entry["counters"][attr] = val
            bus = getattr(dev, "bus", None)
            bstats = getattr(bus, "stats", None)
            for attr in ("transactions", "retries", "failures"):
                val = getattr(bstats, attr, None)
                if isinstance(val, (int, float)):
                    entry["counters"][attr] = val
            out.append(entry)
        return out

    def _carbon(self, today: dict) -> dict:
        out = {"today": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in today.items()},
               "source": "energy account (controller/carbon/account.py: the ledger's integration; "
                         "signed intervals below when the ledger is attached)"}
        supplied = today["pv_kwh"] + today["grid_import_kwh"] + today["genset_kwh"]
        out["today"]["renewable_share"] = round(today["pv_kwh"] / supplied, 4) if supplied > 0 else None
        co2 = today["co2_grid_kg"] + today["co2_diesel_kg"]
        out["today"]["co2_kg"] = round(co2, 3)
        out["today"]["kg_per_kwh_load"] = round(co2 / today["load_kwh"], 4) if today["load_kwh"] > 0 else None
        for hook in list(getattr(self.loop, "hooks", [])):
            writer = getattr(hook, "writer", None)
            if writer is not None and hasattr(hook, "closed"):
                iv = getattr(hook, "iv", None)
                pool = getattr(hook, "pool", None)
                out["ledger"] = {"intervals_closed": hook.closed,
                                 "interval_start": _iso(iv.t_start) if iv is not None else None,
                                 "interval_covered_s": _f(iv.covered_s) if iv is not None else None,
                                 "battery_pool_kg_per_kwh": _f(pool.kg / pool.kwh) if pool is not None and
                                 getattr(pool, "kwh", 0) and hasattr(pool, "kg") else None}
                path = getattr(writer, "path", None)
                if path is not None:
                    self._ledger_scan(Path(path))
                    out["ledger"]["today"] = self._ledger_days.get(today.get("day"))
        return out

    def _ledger_scan(self, path: Path) -> None:
        """Read the interval records the carbon ledger appended since the last look (the file, not
        the writer's memory: intervals closed while nobody was attached count too)."""
        from controller.carbon.ledger import LineError, parse_line
        try:
            with open(path, "rb") as f:
                f.seek(self._ledger_off)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1                 # whole lines only; a line being written waits
        self._ledger_off += end
        for line in data[:end].splitlines():
            try:
                payload, _head, _sig = parse_line(line)
            except LineError:
                continue
            if payload.get("kind") == "interval":
                self._ledger_add(payload)

    def _ledger_add(self, rec: dict) -> None:
        """One signed 15-min interval into its local day's CFE, CO2 and per-job sums."""
        try:
            t0 = datetime.fromisoformat(rec["t_start"].replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError, AttributeError):
            return
        day = self.account.day_of(t0)              # the site-local day, as carbon.today's
        if day not in self._ledger_days:
            while len(self._ledger_days) >= 3:         # today and the two before are plenty
                self._ledger_days.pop(min(self._ledger_days))
            self._ledger_days[day] = {"day": day, "intervals": 0, "load_kwh": 0.0, "cfe_kwh": 0.0,
                                      "co2_location_kg": 0.0, "co2_market_kg": 0.0, "jobs": {}}
        try:
            d = self._ledger_days[day]
            cfe = rec["cfe"]
            d["intervals"] += 1
            d["load_kwh"] += float(cfe["load_kwh"])
            d["cfe_kwh"] += float(cfe["onsite_kwh"]) + float(cfe["contract_kwh"]) + float(cfe["grid_kwh"])
            d["co2_location_kg"] += float(rec["co2_kg"]["loads_location"])
            d["co2_market_kg"] += float(rec["co2_kg"]["loads_market"])
            for job, j in (rec.get("jobs") or {}).items():
                acc = d["jobs"].setdefault(job, {"kwh": 0.0, "kg": 0.0})
                acc["kwh"] += float(j["kwh"])
                acc["kg"] += float(j["kg_location"])
            d["cfe_pct"] = round(100.0 * d["cfe_kwh"] / d["load_kwh"], 2) if d["load_kwh"] > 0 else None
        except (KeyError, TypeError, ValueError):
            pass                                  # an older ledger format: leave today's sums as they are

    def _snapshot_line(self, pub) -> bytes:
        if self._snapshot_cache[0] == pub[0]:
            return self._snapshot_cache[1]
        obj = self._snapshot(pub)
        line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        self._snapshot_cache = (pub[0], line)
        self.stats["published"] += 1
        return line

    def _snapshot(self, pub) -> dict:
        (seq, cycle, t_s, value, quality, cmd, stamp, now_mono, err_c, stale_c, events, today, loop_stats,
         trips, plan) = pub
        op_mode = int(value[INDEX["op_mode"]])
        req = float(value[INDEX["op_battery_kw"]])
        bat = float(cmd[L.C_BATTERY_KW])
        manual = {"mode": ("auto", "manual", "standby")[op_mode] if 0 <= op_mode <= 2 else str(op_mode),
                  "requested_kw": _f(req), "battery_kw": _f(bat), "clamped": False, "reason": None,
                  "genset": {-1: None, 0: False, 1: True}.get(int(value[INDEX["op_genset"]]))}
        if int(cmd[L.C_MODE]) == L.MODE_MANUAL and abs(req - bat) > 0.5 and abs(bat) < abs(req):
            manual["clamped"] = True
            if req > float(cmd[L.C_DISCHARGE_LIMIT_KW]) + 1e-9:
                manual["reason"] = L.reason_name(cmd[L.C_DISCHARGE_REASON])
            elif req < -float(cmd[L.C_CHARGE_LIMIT_KW]) - 1e-9:
                manual["reason"] = L.reason_name(cmd[L.C_CHARGE_REASON])
            else:
                manual["reason"] = "ramp"
        snap = {
            "type": "snapshot", "seq": seq, "cycle": cycle, "t_s": t_s, "utc": _iso(t_s),
            "points": {p.name: [_f(value[i]), int(quality[i])] for i, p in enumerate(CATALOGUE)},
            "commands": {name: _f(cmd[i]) for i, name in enumerate(L.COMMAND_NAMES)},
            "mode": L.MODE_NAMES[int(cmd[L.C_MODE])] if 0 <= int(cmd[L.C_MODE]) < len(L.MODE_NAMES) else "?",
            "charge_reason": L.reason_name(cmd[L.C_CHARGE_REASON]),
            "discharge_reason": L.reason_name(cmd[L.C_DISCHARGE_REASON]),
            "alarms": {"active": int(cmd[L.C_ALARMS_ACTIVE]), "unacked": int(cmd[L.C_ALARMS_UNACKED])},
            "manual": manual,
            "loop": {**{k: _f(v) for k, v in loop_stats.as_dict().items()}, "interlock_trips": int(trips)},
            "events": [[s, t, c, _f(v)] for s, t, c, v in events[-60:]],
            "audit": list(self._audit_briefs),       # server-made fields only; records whole: the audit op
            "devices": self._devices(stamp, now_mono, quality, err_c, stale_c),
            "carbon": self._carbon(today),
            "uplink": self._uplink(),
            "pin": {"locked_s": _f(max(0.0, self.locked_until - time.monotonic()))},
            "ipc": {**self.stats, "rate_limited_by": dict(self.rate_limited_by)},
            "plan": ({n: _f(plan[k]) for k, (n, _i) in enumerate(PLAN_FIELDS)}
                     if plan is not None and plan[0] > 0 else None),
        }
        return snap

    def _uplink(self) -> dict:
        if self.uplink is None:
            return {"attached": False, "message": "no uplink in this process (edge-ems run without an MQTT broker)"}
        try:
            return {"attached": True, **self.uplink.stats()}
        except Exception as exc:
            return {"attached": True, "error": repr(exc)}

    def history(self) -> dict:
        n = min(self._hist_n, HISTORY_N)
        start = self._hist_n - n
        rows = [self._hist[i % HISTORY_N] for i in range(start, self._hist_n)]
        return {"type": "history", "step_s": HISTORY_STEP_S, "fields": ["t_s", *HISTORY_FIELDS],
                "rows": [[_f(x) for x in r] for r in rows], "plan": self._plan()}

    def _plan(self) -> dict | None:
        """The strategy's plan for the next hours, when the loop publishes one as ``loop.plan`` (a dict
        with t0_s, step_s and soc_pct / battery_kw lists; the MPC's contract); None otherwise."""
        plan = getattr(self.loop, "plan", None)
        if not isinstance(plan, dict):
            return None
        try:
            return {"t0_s": float(plan["t0_s"]), "step_s": float(plan["step_s"]),
                    "soc_pct": [_f(x) for x in plan.get("soc_pct", [])],
                    "battery_kw": [_f(x) for x in plan.get("battery_kw", [])]}
        except (KeyError, TypeError, ValueError):
            return None
