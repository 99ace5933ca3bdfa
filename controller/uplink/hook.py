"""The scan loop's side of the uplink: a per-cycle hook that feeds the spool, and the wiring.

``make_uplink_hook(cfg, broker_url, data_dir) -> (hook, uplink)``; pass ``hook`` in the loop's hooks
(``run_sim(..., hooks=[hook])``), call ``uplink.close(drain_timeout_s)`` at the end.

Per cycle the hook does only in-memory work: accumulate the 1-min summary and the 15-min totals, turn
step events into event records and alarm raise/clear records, and apply commands the uplink's
supervisor thread already verified. Records go to ``Spool.put`` (a queue append); the spool writer
thread commits them; the MQTT side (reads, batches, zlib, paho) runs in a worker process.
It is also the uplink's watchdog (``Uplink.supervise``, an ``is_alive`` per thread): a dead spool
writer or MQTT side is restarted and alarmed (``uplink_writer_fault``, ``uplink_worker_fault``), the
spool's full / degraded state is ``uplink_spool_full``.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from pathlib import Path

from controller.core import layout as L
from controller.uplink.client import BrokerConfig, MqttUplink
from controller.uplink.priority import protect_scan_cycle
from controller.uplink.proc import UplinkProcess
from controller.uplink.commands import CommandVerifier, Limits, COUNTER_KEY, load_public_key
from controller.uplink.drain import DrainPolicy
from controller.uplink.reserve import DEFAULT_RESERVE
from controller.uplink.spool import DEFAULT_QUOTA, Spool
from controller.uplink.summary import MinuteSummary
from controller.uplink.topics import ALARM, CMD_RESULT, EVENT, INTERVAL, TELEMETRY, Topics

# the kernel's alarm events (value: alarm bit, names in layout.ALARM_NAMES) -> alarm record state
ALARM_EVENTS = {L.EV_ALARM_RAISED: "raised", L.EV_ALARM_CLEARED: "cleared", L.EV_ALARM_ACKED: "acknowledged"}
SEVERITY = {"uplink_spool_full": "warning", "uplink_writer_fault": "warning", "uplink_worker_fault": "warning"}
FAULT_HOLD_S = 60.0     # a writer / worker fault alarm stays raised this long after the last fault (wall time)
TELEMETRY_BATCH = 5     # 1-min summaries per uplink message in normal operation (5 min hold; README bytes/day)


def _load_severities() -> None:
    """The alarm catalogue's severities (a TOML parse, ~15 ms): make_uplink_hook reads them before the first
    cycle, so the first alarm does not pay for it in the scan cycle."""
    try:
        from controller.alarms import catalogue
        SEVERITY.update({a.name: a.severity for a in catalogue().values()})
    except Exception:
        pass


def _severity(name: str) -> str:
    if name in SEVERITY:
        return SEVERITY[name]
    _load_severities()
    return SEVERITY.setdefault(name, "warning")


def _f(x):
    x = float(x)
    return round(x, 4) if math.isfinite(x) else None


class BoundedList(list):
    """A list that keeps its last `cap` items (trimmed in blocks, so an append stays O(1) amortised):
    the verdicts and applied commands are for the status page and tests; the spool has them all."""

    def __init__(self, cap: int = 256):
        super().__init__()
        self.cap = cap

    def append(self, item) -> None:
        super().append(item)
        if len(self) > self.cap + self.cap // 4:
            del self[:len(self) - self.cap]


class Uplink:
    """What make_uplink_hook returns next to the hook: the spool, the MQTT side, the verifier, state."""

    def __init__(self, spool: Spool, mqtt: MqttUplink | None, verifier: CommandVerifier, topics: Topics):
        self.spool, self.mqtt, self.verifier, self.topics = spool, mqtt, verifier, topics
        self.now_s: float | None = None          # the controller's UTC (image t_s), for command expiry
        self.accepted: deque = deque(maxlen=1024)   # verified commands waiting for the next cycle
        self.applied: BoundedList = BoundedList()
        self.verdicts: BoundedList = BoundedList()
        self.inputs = None                       # controller/netinputs.py NetworkInputs (attach_inputs)
        self.account = None                      # controller/carbon/account.py EnergyAccount (its provisional interval)
        self.active_alarms: dict[str, dict] = {}
        self.hook_s: deque = deque(maxlen=65536)
        self.schedule: dict | None = None        # accepted setpoint schedule being followed
        self.live_dropped = 0                    # publish_live signals not handed to the MQTT side
        self._lock = threading.Lock()
        self._spool_alarm = False
        self.fault_hold_s = FAULT_HOLD_S         # a fault alarm clears this long after the last fault
        self._faults_seen = {"uplink_writer_fault": 0, "uplink_worker_fault": 0}
        self._fault_at: dict[str, float] = {}

    def attach_inputs(self, inputs) -> None:
        """Deliver the inbound topics (compute/power, compute/job, market) and the verified weather_warning
        and grid_update commands to `inputs` (NetworkInputs: feed(kind, payload, recv_t_utc_s))."""
        self.inputs = inputs
        if self.mqtt is not None:
            self.mqtt.on_input = inputs.feed

    def handle_command(self, raw: bytes) -> None:
        """Runs in the MQTT thread: verify, record the verdict, queue an accepted command."""
        now = self.now_s if self.now_s is not None else time.time()
        with self._lock:
            verdict = self.verifier.verify(raw, now)
        body = verdict.body()
        self.verdicts.append(body)
        self.spool.put(CMD_RESULT, now, body)
        self.spool.put(EVENT, now, {"event": "command", **body})
        if verdict.accepted:
            self.accepted.append(verdict.command)

    def raise_alarm(self, t_s: float, name: str, value=None) -> None:
        if name in self.active_alarms:
            return
        body = {"alarm": name, "state": "raised", "severity": _severity(name), "value": value}
        self.active_alarms[name] = body
        self.spool.put(ALARM, t_s, body)

    def clear_alarm(self, t_s: float, name: str, value=None) -> None:
        if self.active_alarms.pop(name, None) is not None:
            self.spool.put(ALARM, t_s, {"alarm": name, "state": "cleared", "severity": _severity(name),
                                        "value": value})

    def supervise(self, t_s: float) -> None:
        """Per cycle (the hook calls it): restart a dead spool writer or MQTT side, and turn the spool's
        and the workers' health into alarm records. Cheap: an ``is_alive`` per thread, integer compares;
        the clock is read only while a fault alarm is up.
        - ``uplink_spool_full``: Spool.alarm (quota, low disk, SQLite refusing writes, records in the reserve);
        - ``uplink_writer_fault``: the writer died and was restarted, or an unexpected error in it
          (writer_errors grew); cleared FAULT_HOLD_S after the last one;
        - ``uplink_worker_fault``: the MQTT side (worker process, its supervisor, or the in-process
          thread) died or crashed and was restarted; cleared FAULT_HOLD_S after the last one."""
        spool = self.spool
        spool.supervise()
        if spool.alarm != self._spool_alarm:
            self._spool_alarm = spool.alarm
            if spool.alarm:
                self.raise_alarm(t_s, "uplink_spool_full", spool.total_bytes)
            else:
                self.clear_alarm(t_s, "uplink_spool_full", spool.total_bytes)
        self._fault(t_s, "uplink_writer_fault", spool.writer_faults,
                    lambda: {"restarts": spool.writer_restarts, "errors": spool.writer_errors,
                             "last": spool.writer_crash if spool.writer_restarts else spool.writer_error})
        mqtt = self.mqtt
        if mqtt is not None and hasattr(mqtt, "supervise"):
            mqtt.supervise()
            self._fault(t_s, "uplink_worker_fault", mqtt.faults,
                        lambda: {"restarts": mqtt.restarts, "crashes": mqtt.crashes, "last": mqtt.last_crash})

    def _fault(self, t_s: float, name: str, count: int, value) -> None:
        if count != self._faults_seen[name]:
            self._faults_seen[name] = count
            self._fault_at[name] = time.monotonic()
            if name in self.active_alarms:
                return
            self.raise_alarm(t_s, name, value())
        elif name in self.active_alarms and time.monotonic() - self._fault_at.get(name, 0.0) >= self.fault_hold_s:
            self.clear_alarm(t_s, name, value())

    def apply(self, loop, t_s: float, cmd: dict) -> None:
        """Between cycles. Records the command as applied; an alarm ack marks the alarm acknowledged.
        Modes, reserve and schedules go to the operator inputs; warnings and grid updates to the network
        inputs (attach_inputs): both reach the step as image points; nothing here writes a setpoint past
        the interlocks."""
        op = loop.devices.get("operator") if loop is not None else None
        a, kind = cmd["args"], cmd["type"]
        if kind == "alarm_ack":
            name = a["alarm"]
            if name.startswith("uplink_"):
                self.active_alarms.get(name, {})["acked"] = True
            elif op is not None and name in L.ALARM_NAMES:
                op.acknowledge(1 << L.ALARM_NAMES.index(name))   # the step raises EV_ALARM_ACKED
        elif kind == "mode" and op is not None:
            op.set_mode(a["mode"])
        elif kind == "reserve_soc" and op is not None:
            op.set_reserve_pct(a["reserve_pct"])
        elif kind == "setpoint_schedule":
            self.schedule = a
        elif kind in ("weather_warning", "grid_update") and self.inputs is not None:
            self.inputs.feed_command(cmd, t_s)   # into the image as the weather / grid device's points
        self.applied.append(cmd)
        self.spool.put(EVENT, t_s, {"event": "command_applied", "id": cmd["id"], "type": cmd["type"]})

    def follow_schedule(self, loop, t_s: float) -> None:
        """Hand the schedule's current slot to the operator inputs (the interlocks clamp it)."""
        op = loop.devices.get("operator") if loop is not None else None
        sch = self.schedule
        k = int((t_s - sch["start_s"]) // sch["step_s"])
        if k >= len(sch["battery_kw"]):
            self.schedule = None
            if op is not None:
                op.set_battery_kw(0.0)
            self.spool.put(EVENT, t_s, {"event": "schedule_done"})
        elif k >= 0 and op is not None:
            op.set_battery_kw(float(sch["battery_kw"][k]))

    def publish_live(self, kind: str, payload: bytes, retain: bool = False) -> bool:
        """ComputeHook's ``publish``: compute/headroom (retained) and compute/defer go to the broker now, with
        their documented QoS and retain (topics.LIVE), never into the spool; without a broker, offline or
        when LIVE_QUEUE already wait they are dropped and counted. Never blocks, never raises."""
        try:
            if self.mqtt is not None and self.mqtt.publish_live(kind, payload, retain):
                return True
        except Exception as exc:                 # the cycle calls this: nothing raises into it
            print(f"uplink: publish_live({kind}) failed: {exc!r}")
        self.live_dropped += 1
        return False

    def close(self, drain_timeout_s: float = 0.0) -> bool:
        """Stop the MQTT side (after up to drain_timeout_s of draining) and close the spool."""
        empty = self.mqtt.stop(drain_timeout_s) if self.mqtt is not None else False
        self.spool.close()
        return empty

    def stats(self) -> dict:
        out = {"spool": self.spool.stats(), "live_dropped": self.live_dropped}
        hs = sorted(self.hook_s)
        if hs:
            out["hook_p99_us"] = round(1e6 * hs[min(len(hs) - 1, int(0.99 * len(hs)))], 1)
            out["hook_max_us"] = round(1e6 * hs[-1], 1)
        if self.mqtt is not None:
            s = self.mqtt.stats
            out["mqtt"] = {k: getattr(s, k) for k in ("connects", "connect_failures", "messages", "batches",
                                                      "records_sent", "records_acked", "nacks", "cloud_acks",
                                                      "resends", "wire_bytes", "payload_bytes", "raw_bytes",
                                                      "live_sent", "live_dropped", "protocol")}
            out["mqtt"].update(faults=self.mqtt.faults, crashes=self.mqtt.crashes, last_crash=self.mqtt.last_crash)
            if isinstance(self.mqtt, UplinkProcess):
                out["mqtt"].update(worker_pid=self.mqtt.pid, worker_restarts=self.mqtt.restarts,
                                   inbound=self.mqtt.worker_stats.get("inbound"))
            else:
                out["mqtt"]["inbound"] = {"passed": dict(self.mqtt.inbound.passed),
                                          "dropped": dict(self.mqtt.inbound.dropped)}
        return out


def make_uplink_hook(cfg, broker_url: str | None, data_dir, *, public_key=None, drain: DrainPolicy | None = None,
                     quota_bytes: int = DEFAULT_QUOTA, min_free_bytes: int | None = None,
                     clock_status: str = "unknown", client_id: str | None = None, require_subscriber: bool = True,
                     start: bool = True, process: bool = True, telemetry_batch: int = TELEMETRY_BATCH,
                     inputs=None, account=None, reserve_bytes: int = DEFAULT_RESERVE, **broker_overrides):
    """Build the per-cycle hook and the uplink behind it. ``broker_url=None``: spool only (offline).

    The cloud's Ed25519 public key: ``public_key`` (PEM / path / raw / key object), else
    ``$EDGE_EMS_CLOUD_KEY`` (a PEM path), else ``DATA_DIR/cloud_pubkey.pem``; without one every command
    is refused ("no cloud public key configured").

    ``telemetry_batch``: 1-min summaries are held until this many wait and go out as one zlib batch
    (DrainPolicy.telemetry_batch_min; used when ``drain`` is None; 1 sends each as it closes).
    ``process=True`` (default): the MQTT side runs in a worker process (proc.py, worker.py), so reading
    the spool, zlib and paho never take the scan cycle's GIL; ``False``: a thread of this process.
    ``inputs``: a controller/netinputs.py NetworkInputs to feed (same as ``uplink.attach_inputs(inputs)``).
    ``reserve_bytes``: the spool's preallocated full-disk reserve for never-dropped records (reserve.py).
    ``account``: the controller's controller/carbon/account.py EnergyAccount (the one the carbon hook and the
    IPC server read): the provisional 15-min interval is its interval, so it carries the ledger's figures;
    without one the hook keeps its own account (the same integration and gap rule)."""
    site, gateway = cfg["site"]["name"], cfg["site"]["gateway_id"]
    topics = Topics(site, gateway)
    if drain is None:
        drain = DrainPolicy(telemetry_batch_min=telemetry_batch)
    broker = BrokerConfig.from_url(broker_url, **broker_overrides) if broker_url else None   # bad URL: fail first
    protect_scan_cycle()                         # the spool writer and MQTT threads share our GIL
    _load_severities()
    kw = {} if min_free_bytes is None else {"min_free_bytes": min_free_bytes}
    spool = Spool(data_dir, site, gateway, quota_bytes=quota_bytes, clock_status=clock_status,
                  reserve_bytes=reserve_bytes, **kw)
    if public_key is None:
        path = os.environ.get("EDGE_EMS_CLOUD_KEY") or str(Path(data_dir) / "cloud_pubkey.pem")
        public_key = path if Path(path).is_file() else None
    verifier = CommandVerifier(load_public_key(public_key), gateway, Limits.from_site(cfg),
                               lambda: spool.get_meta(COUNTER_KEY, "0"),
                               lambda value: spool.set_meta(COUNTER_KEY, value))
    up = Uplink(spool, None, verifier, topics)
    if broker is not None:
        cls = UplinkProcess if process else MqttUplink
        up.mqtt = cls(spool, topics, broker, drain=drain, client_id=client_id,
                      on_command=up.handle_command, require_subscriber=require_subscriber)
    if inputs is not None:
        up.attach_inputs(inputs)
    if broker is not None:
        if start:
            up.mqtt.start()
    if account is None:
        from controller.carbon.account import EnergyAccount
        account = EnergyAccount(cfg)
    up.account = account
    minute = MinuteSummary()
    last = {"interval_seq": account.closed_seq}
    spool.put(EVENT, time.time(), {"event": "uplink_boot", "boot_id": spool.boot_id})

    def hook(loop, image, cmd, events, n):
        t0 = time.perf_counter()
        t = float(image["t_s"])
        up.now_s = t
        value, quality = image["value"], image["quality"]
        body = minute.add(t, value, quality, cmd)
        if body is not None:
            spool.put(TELEMETRY, t, body)
        account.update(image, loop.period_s if loop is not None else 1.0)
        if account.closed_seq != last["interval_seq"]:
            for seq, iv in account.closed_since(last["interval_seq"]):
                spool.put(INTERVAL, t, account.provisional(iv))
            last["interval_seq"] = account.closed_seq
        for i in range(n):
            code, v = int(events[i, 0]), _f(events[i, 1])
            spool.put(EVENT, t, {"event": L.EVENT_NAMES.get(code, str(code)).split(":")[0].split(" ")[0],
                                 "code": code, "value": v})
            if code in ALARM_EVENTS and v is not None and 0 <= int(v) < len(L.ALARM_NAMES):
                name = L.ALARM_NAMES[int(v)]
                state = ALARM_EVENTS[code]
                if state == "raised":
                    up.active_alarms[name] = {"alarm": name, "state": state}
                elif state == "cleared":
                    up.active_alarms.pop(name, None)
                spool.put(ALARM, t, {"alarm": name, "state": state, "severity": _severity(name), "value": int(v)})
        if up.schedule is not None:
            up.follow_schedule(loop, t)
        up.supervise(t)                          # a dead writer / MQTT side restarted; spool and worker alarms
        while up.accepted:
            up.apply(loop, t, up.accepted.popleft())
        up.hook_s.append(time.perf_counter() - t0)

    return hook, up
