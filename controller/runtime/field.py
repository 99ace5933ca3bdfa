"""`edge-ems run` on a gateway: the field provider and the parts of a real cabinet's runtime.

The field provider builds the drivers of every `simulated = false` device from `[buses]` and
`[[devices]]` (drivers/factory.py: Modbus RTU, Modbus TCP, CAN) and the network inputs (controller/
netinputs.py: compute platform, market feed, warnings, each point with the age of its message). The
clock is the system clock; its sync status goes into the ledger. Everything that must outlive the
process lives in the data directory (controller/runtime/datadir.py): the key, the one ledger, the
recording segments, the spool and the state file - so a restart (systemd after a crash, a power cut)
resumes where it stopped. No simulator module is imported on this path (tests/test_layering.py).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time

from controller.core import layout as L
from controller.loop import RealClock
from controller.params import build_params
from controller.runtime.datadir import DataDir
from controller.runtime.site import Provided, SiteRuntime

log = logging.getLogger("edge_ems.run")
STATE_SAVE_S = 60.0          # the state file is written at most this often (SD-card wear), and at close
HEALTH_EVERY = 10            # cycles between checks of the data directory's writers


def field_provider(cfg, job_listeners=()) -> tuple[Provided, object]:
    """(Provided, NetworkInputs) for a profile's field and network devices; `job_listeners` (the ledger's
    JobBook) hear every compute/job and compute/power message."""
    from controller.carbon.hook import system_clock_status
    from controller.netinputs import NetworkInputs
    from drivers.factory import build_field_devices
    built = build_field_devices(cfg)
    inputs = NetworkInputs(cfg, listeners=job_listeners)
    devices = {**built.devices, **inputs.devices()}
    missing = [d["name"] for d in cfg["devices"] if d["name"] not in devices and not d["simulated"]]
    problems = list(built.problems) + [f"device {n}: no driver for its bus/role" for n in missing]
    return Provided(devices, RealClock(), time.time(), close=built.close, problems=problems, kind="field",
                    clock_status=system_clock_status, extra={"supported": built.supported}), inputs


class StateKeeper:
    """Watchdog-slot part: the state file every STATE_SAVE_S and at close (billed peak, genset counters and
    run hours, forecasters: controller/runtime/statefile.py), and the health of the data directory's
    writers as host alarms."""

    def __init__(self, rt: SiteRuntime, statefile, counters, recorder, carbon):
        self.rt, self.statefile, self.counters, self.recorder, self.carbon = rt, statefile, counters, recorder, carbon
        self.tz = rt.cfg["site"]["timezone"]
        self._n = 0
        self._next_save = time.monotonic() + STATE_SAVE_S

    def save(self, force: bool = True) -> None:
        from controller.runtime.statefile import persisted_slots
        loop = self.rt.loop
        if loop is None or loop.cycle_no == 0:
            return
        content = persisted_slots(loop.state, float(loop.image["t_s"]), self.tz, self.counters.values)
        self.statefile.save(content, force=force)
        self.rt.alarms.set("state_file_unwritable", self.statefile.degraded, self.statefile.last_error)

    def __call__(self, loop, image, cmd, events, n) -> None:
        self.counters.update(image)
        self._n += 1
        if self._n % HEALTH_EVERY == 0:
            rec = self.recorder
            self.rt.alarms.set("recording_degraded", bool(getattr(rec, "degraded", False)),
                               getattr(rec, "last_error", ""))
            for name, dev in self.rt.provided.devices.items():
                err = getattr(dev, "last_error", None)
                if err is not None:                # a field device that stopped answering (or refuses a block)
                    self.rt.alarms.set(f"device_comm:{name}", bool(err), err)
                werr = getattr(dev, "last_write_error", None)
                if werr is not None:               # answers reads, not writes: the setpoint is not arriving
                    self.rt.alarms.set(f"device_writes:{name}", bool(werr), werr)
            c = self.carbon                        # degraded: a record waits for the disk, or the file is broken
            self.rt.alarms.set("ledger_degraded", bool(c.degraded), str(c.last_error))
        if time.monotonic() >= self._next_save:  # the slots are copied only when a save is due
            self._next_save = time.monotonic() + STATE_SAVE_S
            self.save(force=False)


def run_field(cfg, *, data_dir: str | None, mqtt: str | None = None, socket_arg: str | None = None,
              cycles: int = 0, strategy: str | None = None) -> int:
    """Run a field site until stopped (SIGTERM/SIGINT) or `cycles` cycles; returns the exit code."""
    from controller.carbon.hook import make_carbon_hook
    from controller.runtime.datadir import DataDirError
    from controller.segments import SegmentRecorder
    from controller.warmup import compile_apart, warmup
    from controller.watchdog import SystemdNotifier
    try:
        dd = DataDir(data_dir).ensure()
    except DataDirError as exc:
        print(f"edge-ems run: {exc}", file=sys.stderr)
        return 2
    compile_apart()                           # a cold numba cache compiles in a child, not in the controller
    warmup()
    from controller.compute.jobs import JobBook
    book = JobBook()
    provided, inputs = field_provider(cfg, [book])
    params = build_params(cfg, strategy, t_ref_s=provided.t_start_utc_s)
    state0 = L.new_state(provided.clock.utc_s() - params[L.P_PERIOD_S])
    from controller.runtime.statefile import RunCounters, StateFile, restore_slots
    statefile = StateFile(dd.state_file, min_interval_s=STATE_SAVE_S)
    saved = statefile.load()
    if statefile.problem:
        print(f"edge-ems run: state file ignored: {statefile.problem}", file=sys.stderr)
    notes = restore_slots(state0, saved, provided.clock.utc_s(), cfg["site"]["timezone"])
    counters = RunCounters(saved)
    site = cfg["site"]
    recorder = SegmentRecorder(dd.recording_dir, params, state0, meta={
        "site": cfg.name, "gateway": site["gateway_id"], "profile": str(cfg.path), "provider": "field"})
    rt = SiteRuntime(cfg, provided, params=params, state0=state0, recorder=recorder)
    if statefile.problem:
        rt.alarms.raise_("state_file_ignored", statefile.problem)
    from controller.carbon.account import EnergyAccount
    from controller.uplink import make_uplink_hook
    account = EnergyAccount(cfg)              # one integration for the ledger, the uplink and the TUI's today
    try:                                      # the spool runs without a broker too: nothing is lost offline
        up_hook, uplink = make_uplink_hook(cfg, mqtt, dd.spool_dir, clock_status=provided.clock_status(),
                                           inputs=inputs, account=account)
    except ValueError as exc:
        print(f"edge-ems run --mqtt: {exc}", file=sys.stderr)
        provided.close()
        return 2
    except (sqlite3.Error, OSError) as exc:   # the spool's reserve gives back blocks on a full disk; none left
        print(f"edge-ems run: the uplink spool in {dd.spool_dir} cannot be opened ({exc}); free space there",
              file=sys.stderr)
        provided.close()
        return 1
    carbon = make_carbon_hook(cfg, dd, jobs=book, clock_status=provided.clock_status,
                              on_record=lambda body: uplink.spool.put("interval", body["end_s"], body),
                              account=account)
    rt.add("ledger", "carbon", carbon, carbon.close)
    rt.add("uplink", "uplink", up_hook, lambda: uplink.close(drain_timeout_s=10.0))
    rt.alarms.listeners.append(lambda state, name, detail: (
        uplink.raise_alarm(time.time(), name, detail) if state == "raised" else uplink.clear_alarm(time.time(), name)))
    for name, a in rt.alarms.snapshot().items():       # raised before the listener existed (start-up problems)
        uplink.raise_alarm(time.time(), name, a["detail"])
    from controller.dcim.run import start_dcim      # the DCIM's Modbus TCP server; None unless [dcim] enabled
    dcim = start_dcim(cfg, alarms=rt.alarms, uplink=uplink, account=account)
    from controller.compute.hook import ComputeHook
    publish = dcim.headroom.tee(uplink.publish_live) if dcim is not None else uplink.publish_live
    compute = ComputeHook(cfg, book, publish=publish, clock_status=provided.clock_status, keep_history=False)
    rt.add("compute", "headroom", compute)
    if dcim is not None:                      # after the compute hook (the headroom), with the IPC's readers
        rt.add("ipc", "dcim", dcim.hook, dcim.close)
    from types import SimpleNamespace
    from controller.ipc import start_ipc_for_run
    ipc = start_ipc_for_run(cfg, SimpleNamespace(socket=socket_arg, out=str(dd.root)),   # exports, audit in D
                            account=account)
    if ipc is not None:
        rt.add("ipc", "ipc", ipc.hook, ipc.close)
        ipc.attach_uplink(uplink)
    notifier = SystemdNotifier()
    keeper = StateKeeper(rt, statefile, counters, recorder, carbon)
    from controller.llvm_pages import release_after_first_cycle
    rt.add("watchdog", "llvm", release_after_first_cycle())   # numba's compiler pages back to a 1 GB gateway
    rt.add("watchdog", "state", keeper, keeper.save)
    rt.add("watchdog", "systemd", notifier.hook, notifier.stopping)
    rt.start()
    rt.install_signals()
    print(f"edge-ems run: site {cfg.name} (gateway {site['gateway_id']}), {len(provided.devices)} devices, "
          f"period {cfg['control']['period_s']} s, data {dd.root}; state: {'; '.join(notes)}", flush=True)
    for problem in provided.problems:
        print(f"edge-ems run: {problem}", file=sys.stderr, flush=True)
    try:
        rt.run(cycles or None)
    finally:
        rt.close()
    stats = rt.stats()
    stats["recording"] = {"records": recorder.records, "dropped": recorder.dropped, "faults": recorder.faults}
    stats["state_file"] = {"saves": statefile.saves, "faults": statefile.faults, "counters": counters.values}
    stats["inputs"] = inputs.stats()
    if dcim is not None:
        stats["dcim"] = dcim.stats()
    stats["devices"] = {name: dev.comm_stats() for name, dev in provided.devices.items() if hasattr(dev, "comm_stats")}
    # the gateway promise: no simulator module in the controller process (pvlib, pandas, tools.sim)
    stats["simulator_modules_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("pvlib", "pandas", "tools"))
    print(json.dumps(stats, default=str))
    return 0

