"""The lab: the simulated cabinet as separate processes on real ports, in real time, for `edge-ems run`.

    python -m tools.sim.lab --site profiles/sites/lab.toml [--scenario NAME] [--dir DIR]
                            [--mqtt mqtt://127.0.0.1:PORT] [--seed S] [--tcp-port P] [--market FILE]
                            [--market-negative] [--compute-period S] [--market-period MIN]
                            [--fault DEVICE=KIND ...]
    python -m tools.sim.lab ctl [--dir DIR] fault DEVICE silent|no-writes|clear | clear | status |
                                restart PROC | stop

Processes (see docs/lab.md): this one runs the physics (SimSite in 1 s steps of the wall clock) and
supervises; each RS-485 segment is a pymodbus RTU server process on a socat pty pair, the Modbus TCP
devices one pymodbus TCP server process, the BMS an slcan adapter process on a socat pty pair, the
compute platform and the market feed one MQTT publisher process each, on a local Mosquitto. Faults are
made the way they happen: stop a process (``kill -STOP`` / SIGTERM, pids in DIR/lab.json), or ask the
control socket (DIR/ctl.sock) for a unit that stops answering, or stops answering writes only.

Files in DIR: ``lab.json`` (written once everything answers: paths, ports, the broker, pids), ``site.toml``
(the profile with the paths and ports really used), ``applied.jsonl`` (every setpoint the emulated PCS,
inverter and genset accepted), ``state.json`` (the physics, each second), ``lab.log``.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tools.netport import free_port

log = logging.getLogger("lab")
DEFAULT_DIR = "/tmp/edge-ems-lab"
DEFAULT_MQTT_PORT = 18830
DEFAULT_SCENARIO = "inner-mongolia-mine"
READY_TIMEOUT_S = 90.0
DEVICE_FAULTS = {"modbus": ("silent", "no-writes"), "can": ("silent",), "compute": ("silent",),
                 "market": ("silent",)}
NAMED_PROCS = ("can", "compute", "market")      # faults by process name: the adapter, the two publishers
ALIASES = {"meter": "grid_meter"}


def _has_group(name: str) -> bool:
    import grp
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the lab dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def _atomic_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _proc_state(pid: int) -> str:
    """'running', 'stopped' (SIGSTOP), or 'gone'."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
    return {"T": "stopped", "t": "stopped", "Z": "gone", "X": "gone"}.get(state, "running")


class Child:
    """One device process and the physics' end of its link."""

    def __init__(self, name: str, kind: str, module: str, cfg: dict, lab_dir: Path):
        self.name, self.kind, self.module, self.cfg = name, kind, module, cfg
        self.cfg_path = lab_dir / "procs" / f"{name}.json"
        self.cfg_path.parent.mkdir(exist_ok=True)
        self.cfg_path.write_text(json.dumps(cfg, indent=1))
        self.log_path = lab_dir / "procs" / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.link = None
        self.ready = False
        self.restarts = -1
        self.stats: dict = {}

    def start(self) -> None:
        from tools.sim.lab_link import Link
        if self.link is not None:
            self.link.close()
        self.link, child_sock = Link.pair()
        fd = child_sock.fileno()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module, str(self.cfg_path), str(fd)],
                                         pass_fds=[fd], stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent, cwd=str(Path(__file__).resolve().parents[2]))
        child_sock.close()
        self.ready = False
        self.restarts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def state(self) -> str:
        if self.proc is None or self.proc.poll() is not None:
            return "gone"
        return _proc_state(self.proc.pid)

    def send(self, msg) -> bool:
        return self.link.send(msg) if self.link is not None else False

    def stop(self, timeout_s: float = 3.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGCONT)     # a stopped process cannot act on SIGTERM
            self.proc.terminate()
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout_s)
        except ProcessLookupError:
            pass


class Lab:
    def __init__(self, args):
        self.args = args
        self.dir = Path(args.dir).resolve()
        self.children: dict[str, Child] = {}
        self.helpers: dict[str, subprocess.Popen] = {}     # socat pairs, mosquitto
        self.faults: dict[str, str] = {}                   # device name -> fault
        self.device_proc: dict[str, str] = {}              # device name -> child name
        self.device_unit: dict[str, int] = {}
        self.stopping = False
        self.ctl: socket.socket | None = None
        self.mqtt_url = ""
        self.published = {"compute/power": 0, "compute/job": 0, "market": 0}

    # --- start-up ---------------------------------------------------------------------------------------
    def prepare(self) -> None:
        from tools.sim.lab_physics import Physics, load_market_file
        from tools.sim.lab_profile import load_plan, write_site_copy
        from tools.sim.scenario import load_scenario

        a = self.args
        self.dir.mkdir(parents=True, exist_ok=True)
        old = self.dir / "lab.json"
        if old.exists():
            try:
                pid = json.loads(old.read_text()).get("pid")
            except ValueError:
                pid = None
            if pid and _proc_state(int(pid)) != "gone" and int(pid) != os.getpid():
                raise RuntimeError(f"{self.dir}: a lab (pid {pid}) already runs here; stop it "
                                   f"(python -m tools.sim.lab ctl --dir {self.dir} stop) or use another --dir")
            old.unlink()
        for stale in ("ctl.sock", "state.json"):
            (self.dir / stale).unlink(missing_ok=True)
        scn = load_scenario(a.scenario)
        tcp_port = free_port() if a.tcp_port == 0 else a.tcp_port
        self.plan = load_plan(a.site, self.dir, tcp_port, fallback_site=scn.site)
        if not self.plan.validated:
            log.warning("%s does not validate against controller/config.py yet (%s); the physics uses the "
                        "site sections of scenario %s", self.plan.site_path, "; ".join(self.plan.problems[:3]),
                        scn.name)
        self.site_copy = write_site_copy(self.plan, self.dir / "site.toml")
        market_file = load_market_file(a.market) if a.market else None
        start = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        t = time.monotonic()
        self.physics = Physics(scn, self.plan, seed=a.seed, hours=a.hours, start=start, market_file=market_file,
                               market_negative=a.market_negative)
        log.info("series for %.0f h of %s computed in %.1f s", a.hours, scn.name, time.monotonic() - t)
        self.t0_mono = time.monotonic() - (datetime.now(timezone.utc) - start).total_seconds()
        self.physics.advance_to(time.monotonic() - self.t0_mono)

    def _socat(self, name: str, link: str, srv: str) -> None:
        for p in (link, srv):
            if os.path.lexists(p):
                os.unlink(p)
        # the controller's end is what a gateway's serial port is: group dialout, 0660 (the service user's group)
        port_opts = ",group=dialout,perm=0660" if _has_group("dialout") else ""
        proc = subprocess.Popen(["socat", "-d", "-d", f"pty,raw,echo=0,link={link}{port_opts}",
                                 f"pty,raw,echo=0,link={srv}"],
                                stdout=subprocess.DEVNULL, stderr=open(self.dir / "procs" / f"socat_{name}.log", "wb"),
                                preexec_fn=_die_with_parent)
        self.helpers[f"socat_{name}"] = proc
        deadline = time.monotonic() + 10
        while not (os.path.exists(link) and os.path.exists(srv)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"socat did not make the pty pair {link} <-> {srv} "
                                   f"(see {self.dir / 'procs' / f'socat_{name}.log'})")
            time.sleep(0.02)

    def start(self) -> None:
        from tools.sim.lab_mqtt import parse_url, start_mosquitto

        a, plan, ph = self.args, self.plan, self.physics
        (self.dir / "procs").mkdir(exist_ok=True)
        applied = str(self.dir / "applied.jsonl")
        Path(applied).touch()             # lab.json names it: it exists (empty) before the first write lands
        for name, seg in plan.segments.items():
            units = [u.config() for u in ph.units[name].values()]
            for u in ph.units[name].values():
                self.device_proc[u.name], self.device_unit[u.name] = name, u.unit
            cfg = {"name": name, "transport": seg.transport, "applied": applied, "units": units,
                   "pv_rated_kw": ph.site.pv_rated_kw, "baud": seg.baud}
            if seg.transport == "rtu":
                self._socat(name, seg.link, seg.srv)
                cfg["path"] = seg.srv
            else:
                cfg.update(host=seg.host, port=seg.port)
            self.children[name] = Child(name, "modbus", "tools.sim.lab_modbus", cfg, self.dir)
        self._socat("can", plan.can["link"], plan.can["srv"])
        self.children["can"] = Child("can", "can", "tools.sim.lab_slcan", {"path": plan.can["srv"]}, self.dir)
        if plan.can["device"] is not None:
            self.device_proc[plan.can["device"]["name"]] = "can"
        if a.mqtt:
            parse_url(a.mqtt)
            self.mqtt_url = a.mqtt
        else:
            port = free_port() if a.mqtt_port == 0 else a.mqtt_port
            self.helpers["mosquitto"] = start_mosquitto(self.dir / "procs", port, preexec_fn=_die_with_parent)
            self.mqtt_url = f"mqtt://127.0.0.1:{port}"
        for name in ("compute", "market"):
            self.children[name] = Child(name, name, "tools.sim.lab_mqtt", {"name": name, "url": self.mqtt_url},
                                        self.dir)
        for c in self.children.values():
            c.start()
        self._push_all()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(c.ready for c in self.children.values()):
            if time.monotonic() > deadline:
                late = [c.name for c in self.children.values() if not c.ready]
                raise RuntimeError(f"lab processes {late} not ready within {READY_TIMEOUT_S} s (see {self.dir}/procs/*.log)")
            for c in self.children.values():
                if c.state() == "gone" and not c.ready:
                    raise RuntimeError(f"lab process {c.name} exited {c.proc.returncode} at start "
                                       f"(see {c.log_path}: {c.log_path.read_text()[-600:]})")
            self._receive(0.2)
        for spec in self.args.fault or ():
            dev, _, kind = spec.partition("=")
            err = self._fault(ALIASES.get(dev, dev), None if kind == "clear" else kind)
            if err:
                raise ValueError(f"--fault {spec}: {err}")
        self._open_ctl()
        self._write_state()          # before lab.json: whoever waits on lab.json finds state.json too
        self._write_lab_json()
        log.info("lab up in %s: %s", self.dir, ", ".join(f"{c.name}={c.pid}" for c in self.children.values()))

    def _open_ctl(self) -> None:
        path = self.dir / "ctl.sock"
        path.unlink(missing_ok=True)
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.bind(str(path))
        self.ctl.listen(8)
        self.ctl.setblocking(False)

    def _write_lab_json(self) -> None:
        plan, ph = self.plan, self.physics
        rtu = {n: {"port": s.link, "server_end": s.srv, "baud": s.baud,
                   "units": {u.name: u.unit for u in ph.units[n].values()}}
               for n, s in plan.segments.items() if s.transport == "rtu"}
        tcp = {n: {"host": s.host, "port": s.port, "units": {u.name: u.unit for u in ph.units[n].values()}}
               for n, s in plan.segments.items() if s.transport == "tcp"}
        doc = {"v": 1, "pid": os.getpid(), "dir": str(self.dir), "site": str(self.site_copy),
               "profile": str(plan.site_path), "profile_validated": plan.validated,
               "scenario": self.physics.scn.name, "seed": self.args.seed,
               "start": ph.start.strftime("%Y-%m-%dT%H:%M:%SZ"), "rtu": rtu, "tcp": tcp,
               "can": {"interface": "slcan", "channel": plan.can["link"], "server_end": plan.can["srv"],
                       "bitrate": plan.can["bitrate"], "bms": plan.can["device"]["name"] if plan.can["device"] else None},
               "mqtt": {"url": self.mqtt_url, "broker_pid": self.helpers["mosquitto"].pid
                        if "mosquitto" in self.helpers else None,
                        "topics": {k: ph.topic(k) for k in ("compute/power", "compute/job", "market")}},
               "procs": {c.name: {"pid": c.pid, "kind": c.kind, "restarts": c.restarts,
                                  "devices": sorted(d for d, p in self.device_proc.items() if p == c.name)}
                         for c in self.children.values()},
               "helpers": {n: p.pid for n, p in self.helpers.items()},
               "devices": dict(self.device_proc),
               "applied": str(self.dir / "applied.jsonl"), "state": str(self.dir / "state.json"),
               "ctl": str(self.dir / "ctl.sock")}
        _atomic_json(self.dir / "lab.json", doc)

    # --- the second ----------------------------------------------------------------------------------------
    def _push_all(self) -> None:
        ph = self.physics
        for name in ph.units:
            self.children[name].send(ph.registers(name))
        frames = ph.frames()
        can_dev = self.plan.can["device"]["name"] if self.plan.can["device"] else "can"
        if self.faults.get(can_dev) != "silent" and self.faults.get("can") != "silent":
            self.children["can"].send({"op": "frames", "frames": frames})

    def _publish(self, child: str, kind: str, payload: dict, qos: int, retain: bool = False) -> None:
        if self.faults.get(child) == "silent":
            return
        if self.children[child].send({"op": "publish", "topic": self.physics.topic(kind), "payload": payload,
                                      "qos": qos, "retain": retain}):
            self.published[kind] += 1

    def _network(self, now: float, t_s: float) -> None:
        a, ph = self.args, self.physics
        if t_s >= self._next_power:
            self._next_power = t_s + a.compute_period
            self._publish("compute", "compute/power", ph.compute_power(now), 0)
        for job in ph.job_messages(now):
            self._publish("compute", "compute/job", job, 1)
        if t_s >= self._next_market:
            self._next_market = t_s + a.market_period * 60.0
            self._publish("market", "market", ph.market(now), 1, retain=True)

    def _receive(self, timeout_s: float) -> None:
        links = {c.link.fileno(): c for c in self.children.values() if c.link is not None and not c.link.closed}
        fds = list(links)
        if self.ctl is not None:
            fds.append(self.ctl.fileno())
        try:
            r, _, _ = select.select(fds, [], [], max(0.0, timeout_s))
        except InterruptedError:
            return
        for c in self.children.values():
            if c.link is not None:
                c.link.flush()
        for fd in r:
            if self.ctl is not None and fd == self.ctl.fileno():
                self._serve_ctl()
                continue
            c = links[fd]
            try:
                msgs = c.link.recv()
            except Exception:              # LinkClosed: the process is gone; it is seen as such
                c.link.closed = True
                continue
            for m in msgs:
                op = m.get("op")
                if op == "ready":
                    c.ready = True
                elif op == "actuate":
                    self.physics.actuate(m)
                elif op == "stats":
                    c.stats = m

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        self._next_power = self._next_market = 0.0
        next_tick = time.monotonic()
        while not self.stopping:
            self._receive(next_tick - time.monotonic())
            now_m = time.monotonic()
            if now_m < next_tick:
                continue
            t_s = now_m - self.t0_mono
            self.physics.advance_to(t_s)
            self._push_all()
            self._network(time.time(), t_s)
            for c in self.children.values():
                if c.ready:
                    c.send({"op": "stats"})
            self._write_state()
            next_tick += 1.0
            if next_tick < now_m:              # late (the lab was stopped or starved): no burst of catch-up
                next_tick = now_m + 1.0
        return 0

    def _write_state(self) -> None:
        doc = {"t": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **self.physics.summary(),
               "faults": dict(self.faults), "published": dict(self.published),
               "procs": {c.name: {"pid": c.pid, "state": c.state(), "link_dropped": c.link.dropped if c.link else 0,
                                  "stats": c.stats} for c in self.children.values()}}
        try:
            _atomic_json(self.dir / "state.json", doc)
        except OSError as exc:
            log.warning("state.json: %s", exc)

    # --- the control socket ------------------------------------------------------------------------------
    def _serve_ctl(self) -> None:
        try:
            conn, _ = self.ctl.accept()
        except (BlockingIOError, OSError):
            return
        with conn:
            conn.settimeout(2.0)
            try:
                data = b""
                while not data.endswith(b"\n") and len(data) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                reply = self.command(data.decode(errors="replace").split())
            except Exception as exc:       # a bad request must not stop the lab
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def command(self, words: list[str]) -> dict:
        if not words:
            return {"ok": False, "error": "empty command"}
        cmd = words[0]
        if cmd == "status":
            return {"ok": True, **json.loads((self.dir / "state.json").read_text())} \
                if (self.dir / "state.json").exists() else {"ok": True}
        if cmd == "stop":
            self.stopping = True
            return {"ok": True}
        if cmd == "clear":
            for dev in list(self.faults):
                self._fault(dev, None)
            return {"ok": True, "faults": {}}
        if cmd == "fault" and len(words) == 3:
            dev = ALIASES.get(words[1], words[1])
            kind = None if words[2] == "clear" else words[2]
            err = self._fault(dev, kind)
            return {"ok": err is None, **({"error": err} if err else {}), "faults": dict(self.faults)}
        if cmd == "restart" and len(words) == 2:
            c = self.children.get(words[1])
            if c is None:
                return {"ok": False, "error": f"no lab process {words[1]!r} (one of {', '.join(self.children)})"}
            c.stop()
            c.start()
            self._push_all()
            for dev, kind in self.faults.items():
                if self.device_proc.get(dev) == c.name and c.kind == "modbus":
                    c.send({"op": "fault", "unit": self.device_unit[dev], "kind": kind})
            self._write_lab_json()
            return {"ok": True, "pid": c.pid}
        return {"ok": False, "error": f"unknown command {' '.join(words)!r}: fault DEVICE KIND | clear | status | "
                                      f"restart PROC | stop"}

    def _fault(self, dev: str, kind: str | None) -> str | None:
        if dev in NAMED_PROCS and dev not in self.device_proc:
            child, allowed = dev, DEVICE_FAULTS[dev]
        else:
            child = self.device_proc.get(dev)
            if child is None:
                return f"no device {dev!r} (one of {', '.join(sorted({*self.device_proc, *NAMED_PROCS}))})"
            allowed = DEVICE_FAULTS[self.children[child].kind]
        if kind is not None and kind not in allowed:
            return f"device {dev}: fault {kind!r} not possible (one of {', '.join(allowed)}, or clear)"
        if kind is None:
            self.faults.pop(dev, None)
        else:
            self.faults[dev] = kind
        if self.children[child].kind == "modbus":
            self.children[child].send({"op": "fault", "unit": self.device_unit[dev], "kind": kind})
        log.info("fault %s %s", dev, kind or "cleared")
        return None

    # --- closing ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        for c in self.children.values():        # all at once: a second, not one per process
            if c.proc is not None and c.proc.poll() is None:
                try:
                    c.proc.send_signal(signal.SIGCONT)
                    c.proc.terminate()
                except ProcessLookupError:
                    pass
        for c in self.children.values():
            c.stop()
            if c.link is not None:
                c.link.close()
        for name, p in reversed(list(self.helpers.items())):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(3)
                except subprocess.TimeoutExpired:
                    p.kill()
        if self.ctl is not None:
            self.ctl.close()
        for f in ("lab.json", "ctl.sock"):
            (self.dir / f).unlink(missing_ok=True)


# --- the command line ---------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.sim.lab", description=__doc__.split("\n\n")[0])
    p.add_argument("--site", default="profiles/sites/lab.toml", help="the field site profile to serve")
    p.add_argument("--scenario", default=DEFAULT_SCENARIO, help="scenario (name or file) for the physics")
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"where the ptys, lab.json and logs go (default {DEFAULT_DIR})")
    p.add_argument("--mqtt", default=None, metavar="mqtt://HOST:PORT",
                   help="an existing broker; without it the lab starts Mosquitto on 127.0.0.1:--mqtt-port")
    p.add_argument("--mqtt-port", type=int, default=DEFAULT_MQTT_PORT, help="port of the lab's Mosquitto (0: any free)")
    p.add_argument("--tcp-port", type=int, default=None, help="Modbus TCP port instead of the profile's (0: any free)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hours", type=float, default=168.0, help="length of the computed series (then it holds)")
    p.add_argument("--compute-period", type=float, default=15.0, help="s between compute/power messages")
    p.add_argument("--market-period", type=float, default=15.0, help="min between market messages")
    p.add_argument("--market", default=None, metavar="FILE", help="publish these prices (JSON) instead of the series'")
    p.add_argument("--market-negative", action="store_true", help="make the 11-14 h local import prices negative")
    p.add_argument("--fault", action="append", metavar="DEVICE=KIND",
                   help="a fault in force from the start, before lab.json (e.g. bms=silent: boot with the BMS silent)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def ctl(argv: list[str]) -> int:
    """``ctl [--dir DIR] WORDS...``: one request to a running lab; prints its JSON reply."""
    p = argparse.ArgumentParser(prog="python -m tools.sim.lab ctl")
    p.add_argument("--dir", default=DEFAULT_DIR)
    p.add_argument("words", nargs="+")
    a = p.parse_args(argv)
    path = Path(a.dir) / "ctl.sock"
    try:
        reply = request(path, a.words)
    except OSError as exc:
        print(f"lab ctl: cannot reach {path}: {exc} (is the lab running with --dir {a.dir}?)", file=sys.stderr)
        return 2
    print(json.dumps(reply, indent=1))
    return 0 if reply.get("ok") else 1


def request(sock_path, words: list[str], timeout_s: float = 10.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(sock_path))
        s.sendall((" ".join(words) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ctl":
        return ctl(argv[1:])
    args = _parser().parse_args(argv)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(Path(args.dir) / "lab.log")])
    from tools.sim.lab_profile import LabError
    lab = Lab(args)
    try:
        lab.prepare()
        lab.start()
        print(f"lab up: {lab.dir}/lab.json; run the controller with\n  edge-ems run --site {lab.site_copy} "
              f"--data-dir DATA --mqtt {lab.mqtt_url}", file=sys.stderr, flush=True)
        return lab.run()
    except (LabError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    finally:
        lab.close()


if __name__ == "__main__":
    sys.exit(main())
