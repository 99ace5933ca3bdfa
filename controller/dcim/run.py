"""Assembling the DCIM server for a runtime: `start_dcim(cfg, ...)` -> a `Dcim` (or None when disabled).

    dcim = start_dcim(cfg, alarms=rt.alarms, uplink=uplink, account=account)
    compute = ComputeHook(cfg, book, publish=dcim.headroom.tee(uplink.publish_live) if dcim else ...)
    rt.add("ipc", "dcim", dcim.hook, dcim.close)       # after the compute hook: it reads the headroom

Per cycle `Dcim.hook` supervises the server thread (is it alive?), builds the block (block.py) and
publishes it; a block it cannot build is counted and the previous one ages out to "not available".
"""
from __future__ import annotations

import logging
import sys
import time
from collections import deque

from controller.dcim.block import BlockBuilder, Headroom
from controller.dcim.regmap import MAP_PATH, load_map
from controller.dcim.server import DcimServer, Publisher
from controller.dcim.writes import WriteGate

log = logging.getLogger("edge_ems.dcim")


class Dcim:
    hook_name = "dcim"

    def __init__(self, cfg, *, alarms=None, uplink=None, account=None, map_path=MAP_PATH,
                 restart_delay_s: float = 0.5, headroom_period_s: float = 60.0):
        d = cfg["dcim"]
        self.cfg, self.settings = cfg, d
        self.rmap = load_map(map_path)
        if account is None:                       # the runtime passes the ledger's; else one of our own
            from controller.carbon.account import EnergyAccount
            account = EnergyAccount(cfg)
        self.headroom = Headroom(headroom_period_s)
        if d["writes"] and uplink is None:
            log.warning("dcim: [dcim] writes = true but this run has no uplink to audit them: writes refused")
            if alarms is not None:
                alarms.raise_("dcim_writes_unavailable", "no uplink (spool) to audit DCIM writes")
        self.gate = WriteGate(self.rmap, enabled=d["writes"], uplink=uplink, setpoint_hold_s=d["setpoint_hold_s"])
        self.builder = BlockBuilder(self.rmap, writes_enabled=self.gate.enabled, account=account, alarms=alarms,
                                    headroom=self.headroom)
        self.publisher = Publisher(self.builder, d["max_age_s"])
        self.server = DcimServer(d["bind"].strip(), d["port"], d["unit_id"], d["max_clients"], self.rmap.size,
                                 self.publisher, self.gate, alarms=alarms, restart_delay_s=restart_delay_s)
        self.hook_s: deque = deque(maxlen=4096)
        self.failures = 0
        self.last_error = ""

    def start(self, wait_s: float = 3.0) -> bool:
        return self.server.start(wait_s)

    def hook(self, loop, image, cmd, events, n) -> None:
        t0 = time.perf_counter()
        try:
            self.server.supervise()
            words, stale_na = self.builder.build(loop, image, cmd)
            self.publisher.publish(words, stale_na)
        except Exception as exc:                  # noqa: BLE001 - the register block is not worth a cycle
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            if self.failures == 1 or self.failures % 1000 == 0:
                log.error("dcim: block not built (%d times): %s", self.failures, self.last_error)
        self.hook_s.append(time.perf_counter() - t0)

    def close(self) -> None:
        self.server.stop()

    def stats(self) -> dict:
        out = self.server.stats()
        hs = sorted(self.hook_s)
        if hs:
            out["hook_p50_us"] = round(1e6 * hs[len(hs) // 2], 1)
            out["hook_p99_us"] = round(1e6 * hs[min(len(hs) - 1, int(0.99 * len(hs)))], 1)
            out["hook_max_us"] = round(1e6 * hs[-1], 1)
        out["blocks"] = self.builder.builds
        if self.failures:
            out["block_failures"], out["block_last_error"] = self.failures, self.last_error
        return out


def start_dcim(cfg, *, alarms=None, uplink=None, account=None, **kw) -> Dcim | None:
    """The DCIM server of `cfg` ([dcim] enabled), started; None when disabled. A server that cannot listen
    yet (address not up, port taken) is reported and alarmed; the controller runs, the supervision retries."""
    if not cfg["dcim"]["enabled"]:
        return None
    dcim = Dcim(cfg, alarms=alarms, uplink=uplink, account=account, **kw)
    d = cfg["dcim"]
    mode = "read-write" if dcim.gate.enabled else "read-only"
    if dcim.start():
        host, port = dcim.server.address
        print(f"edge-ems run: DCIM Modbus TCP on {host}:{port} unit {d['unit_id']} ({mode})", flush=True)
    else:
        print(f"edge-ems run: DCIM Modbus TCP on {d['bind']}:{d['port']} not listening "
              f"({dcim.server.last_error or 'not yet'}); retried while the controller runs", file=sys.stderr,
              flush=True)
    return dcim
