"""The technician's TUI driven as a person would, over a serial line.

A real controller (`edge-ems run --wire`, simulated site, Modbus on a pty RS-485 bus) serves its socket;
`edge-ems tui` runs on one end of a socat pty pair set to 115200 8N1 (the gateway's console), the other
end is read by tools/bench/serial_line.py at the UART's real byte rate into a tmux pane of 80x24 (the
laptop's terminal emulator). Keys go in with `tmux send-keys`, the screen comes out with `capture-pane`,
and what it shows is compared with what the controller holds (its own snapshots, read next to the TUI
by a second socket client).

The scenario adds a short cell imbalance at the start: cell_overvoltage (a latching alarm) is raised,
its condition clears within a minute of simulated time, and it stays in the active list until acked.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from controller.ipc import IpcClient
from controller.tui.app import DEMO_PIN, start_demo, wait_for_socket
from tools.bench.serial_line import SerialLine, open_line

ROOT = Path(__file__).resolve().parents[1]
SPEED = 3.0
LOCKOUT_S = 6.0
BAUD = 115200

SCENARIO_EXTRA = """
[[events]]
kind = "cell_imbalance"
at_h = 0.0
duration_min = 2.0
mv = 300.0
note = "test: one cell up to 0.3 V high around minute 1 (cell_overvoltage, latching, clears by ~90 s)"
"""


def _need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is needed by the TUI tests: make deps-debian installs it"
    return path


class SnapshotLog:
    """A second socket client subscribed at 4 Hz: what the controller held, and when."""

    def __init__(self, sock: Path):
        self.client = IpcClient(sock)
        self.client.send({"op": "subscribe", "hz": 4})
        self.snaps: list[tuple[float, dict]] = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                msg = self.client.recv(0.5)
            except (ConnectionError, OSError):
                return
            if msg and msg.get("type") == "snapshot":
                self.snaps.append((time.monotonic(), msg))

    def latest(self, timeout_s: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while not self.snaps and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.snaps[-1][1]

    def window(self, seconds: float = 3.0) -> list[dict]:
        t = time.monotonic() - seconds
        return [s for tt, s in self.snaps if tt >= t]

    def close(self):
        self.stop = True
        self.thread.join(timeout=2)
        self.client.close()


class Console:
    """socat pty pair + `edge-ems tui` on the gateway side + the serial line into a tmux pane."""

    def __init__(self, workdir: Path, sock: Path, name: str, ascii: bool = False):
        self.dir = workdir / name
        self.dir.mkdir()
        self.gw, self.laptop = self.dir / "tty-gw", self.dir / "tty-laptop"
        self.socat = subprocess.Popen([_need("socat"), "-d", "-d", f"pty,raw,echo=0,link={self.gw},b{BAUD}",
                                       f"pty,raw,echo=0,link={self.laptop},b{BAUD}"],
                                      stdout=subprocess.DEVNULL, stderr=open(self.dir / "socat.log", "w"))
        deadline = time.monotonic() + 10
        while not (self.gw.exists() and self.laptop.exists()):
            assert time.monotonic() < deadline, "socat made no pty pair"
            time.sleep(0.05)
        self.gw_fd = os.open(self.gw, os.O_RDWR | os.O_NOCTTY)
        cmd = [sys.executable, "-m", "controller.cli", "tui", "--socket", str(sock)] + (["--ascii"] if ascii else [])
        self.tui = subprocess.Popen(cmd, stdin=self.gw_fd, stdout=self.gw_fd, stderr=open(self.dir / "tui.err", "w"),
                                    cwd=ROOT, start_new_session=True)
        self.tmux_sock = f"edge-ems-tui-test-{os.getpid()}-{name}"
        self.stats = self.dir / "line.json"
        self._tmux("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24",
                   f"{sys.executable} -m tools.bench.serial_line --port {self.laptop} --baud {BAUD} "
                   f"--stats {self.stats}")
        self._tmux("set-option", "-g", "status", "off")

    def _tmux(self, *args) -> str:
        out = subprocess.run([_need("tmux"), "-f", "/dev/null", "-L", self.tmux_sock, *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, f"tmux {args[0]}: {out.stderr}"
        return out.stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        for k in keys:
            self._tmux("send-keys", "-t", "tui", *(["-l"] if literal else []), k)
            time.sleep(0.08)

    def type(self, text: str) -> None:
        self.keys(text, literal=True)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "tui")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:   # event-driven: slack for a loaded box
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            m = re.search(pattern, text, re.M)
            if m:
                return m
            time.sleep(0.15)
        raise AssertionError(f"{pattern!r} not on screen within {timeout} s; screen:\n{text}")

    def line_bytes(self) -> tuple[int, float]:
        d = json.loads(self.stats.read_text())
        return d["bytes"], d["t"]

    def close(self) -> None:
        subprocess.run([_need("tmux"), "-L", self.tmux_sock, "kill-server"], capture_output=True, timeout=10)
        for proc in (self.tui, self.socat):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        os.close(self.gw_fd)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    work = tmp_path_factory.mktemp("tui")
    scn = work / "scenario.toml"
    scn.write_text((ROOT / "profiles/scenarios/inner-mongolia-mine.toml").read_text() + SCENARIO_EXTRA)
    proc, sock = start_demo(work, speed=SPEED, scenario=scn, wire=True, lockout_s=LOCKOUT_S)
    con = log = None
    try:
        wait_for_socket(sock, proc, timeout_s=60).close()
        log = SnapshotLog(sock)
        log.latest(timeout_s=300)             # a cold numba cache compiles the kernels before the first cycle
        con = Console(work, sock, "main")
        con.wait_for(r"O\)verview", timeout=90)          # the first full draw, on a loaded machine
        yield {"con": con, "log": log, "proc": proc, "sock": sock, "work": work}
    finally:
        if con is not None:
            con.close()
        if log is not None:
            log.close()
        if proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _num(pattern: str, text: str) -> float:
    m = re.search(pattern, text, re.M)
    assert m, f"{pattern!r} not found in:\n{text}"
    return float(m.group(1))


def _held(log: SnapshotLog, get, seconds: float = 4.0) -> list[float]:
    """The values the controller held over the last seconds (the screen lags by <= a frame + a snapshot)."""
    vals = []
    for s in log.window(seconds):
        v = get(s)
        if v is not None and math.isfinite(v):
            vals.append(float(v))
    assert vals, "no snapshots in the window"
    return vals


def _shown_matches(shown: float, held: list[float], res: float) -> None:
    assert min(held) - res <= shown <= max(held) + res, f"screen shows {shown}, the controller held {held}"


def _pt(name):
    return lambda s: s["points"][name][0]


def test_each_screen_shows_the_controllers_values(rig):
    con, log = rig["con"], rig["log"]
    con.keys("o")
    text = con.wait_for(r"POWER FLOWS").string
    time.sleep(0.8)
    text = con.screen()
    _shown_matches(_num(r"SOC\s+([\d.]+) %", text), _held(log, _pt("soc_pct")), 0.051)
    _shown_matches(_num(r"^IT\s+([-\d.]+)", text), _held(log, _pt("it_kw")), 0.051)
    _shown_matches(_num(r"^Battery\s+([-\d.]+)", text), _held(log, _pt("battery_kw")), 0.051)
    assert re.search(r"Dis <=\s+[\d.]+ kW (\w+)", text).group(1) in {s["discharge_reason"] for s in log.window(4)}
    assert len(text.splitlines()) == 24 and max(len(x) for x in text.splitlines()) <= 80

    con.keys("b")
    con.wait_for(r"INTERLOCKS")
    time.sleep(0.8)
    text = con.screen()
    _shown_matches(_num(r"Cell V max\s+([\d.]+) V", text), _held(log, _pt("cell_v_max")), 0.0006)
    _shown_matches(_num(r"Cell V min\s+([\d.]+) V", text), _held(log, _pt("cell_v_min")), 0.0006)
    _shown_matches(_num(r"DCL\s+([\d.]+) A", text), _held(log, _pt("bms_dcl_a")), 0.051)
    _shown_matches(_num(r"Charge limit\s+([\d.]+) kW", text),
                   _held(log, lambda s: s["commands"]["charge_limit_kw"]), 0.051)

    con.keys("a")
    text = con.wait_for(r"ACTIVE ALARMS \((\d+)\)").string
    n_shown = int(re.search(r"ACTIVE ALARMS \((\d+)\)", text).group(1))
    assert n_shown in {bin(s["alarms"]["active"]).count("1") for s in log.window(4)}

    con.keys("d")
    con.wait_for(r"LAST GOOD")
    text = con.wait_for(r"^BUSES ").string                          # the rows after the table have arrived
    snap = log.latest()
    for d in snap["devices"]:
        row = re.search(rf"^\d+\s+{d['name']}\s+{d['role']}\s+\S+\s+(?:[\d.]+ s|never)\s+(\d+)/(\d+)", text, re.M)
        assert row, f"device {d['name']} not listed:\n{text}"
        assert int(row.group(2)) == d["points"]

    con.keys("c")
    con.wait_for(r"CARBON TODAY")
    time.sleep(0.8)
    text = con.screen()
    _shown_matches(_num(r"Load\s+([\d.]+) kWh", text), _held(log, lambda s: s["carbon"]["today"]["load_kwh"], 5), 0.051)
    _shown_matches(_num(r"Grid intensity now\s+([\d.]+)", text), _held(log, _pt("grid_co2_kg_per_kwh")), 0.0006)
    assert re.search(r"Ledger: \d+ intervals closed", text)          # the run writes a carbon ledger

    con.keys("u")
    con.wait_for(r"UPLINK")
    assert log.latest()["uplink"]["attached"] is False
    con.wait_for(r"Connected\s+no uplink in this process")            # "not available", no crash

    con.keys("e")
    con.wait_for(r"EVENTS \(newest first")
    time.sleep(0.8)
    text = con.screen()
    _events_shown(log, text)


def _events_shown(log: SnapshotLog, text: str) -> None:
    """The events screen lists what the controller holds: its newest events, or "none yet"."""
    names = {int(k): v.split(":")[0].split(" (")[0] for k, v in log.client.hello["events"].items()}
    window = log.window(4)
    recent = {names[e[2]] for s in window for e in s["events"][-2:]}
    if not recent and not any(s["audit"] for s in window):
        assert "none yet" in text, text
    else:
        assert any(re.search(rf"^\d\d:\d\d:\d\d  {n}\b", text, re.M) for n in recent), (recent, text)


def _login(con: Console, pin: str) -> None:
    con.keys("p")
    con.wait_for(r"PIN \(Enter")
    con.type(pin)
    con.keys("Enter")


def test_wrong_pin_is_refused_and_locks_out(rig):
    con = rig["con"]
    con.keys("o")
    _login(con, "0000")
    con.wait_for(r"wrong PIN \(2 tries left\)")
    con.keys("m")                                    # an action without a session asks for the PIN
    con.wait_for(r"PIN \(Enter")
    con.keys("Escape")
    con.wait_for(r"cancelled")
    _login(con, "1111")
    con.wait_for(r"wrong PIN \(1 try left\)")
    _login(con, "2222")
    con.wait_for(r"wrong PIN: locked out for 6 s")
    _login(con, DEMO_PIN)                            # the right PIN is refused while locked out
    con.wait_for(r"locked out: try again in \d+ s")
    assert "PIN ok" not in con.screen().splitlines()[0]
    time.sleep(LOCKOUT_S + 0.5)
    _login(con, DEMO_PIN)
    con.wait_for(r"PIN accepted")
    con.wait_for(r"^ edge-ems .*PIN ok")
    audit = [json.loads(x) for x in (rig["work"] / "out" / "audit.jsonl").read_text().splitlines()]
    kinds = [(a["action"], a["ok"]) for a in audit]
    assert kinds.count(("login", False)) >= 3 and ("lockout", False) in kinds and ("login", True) in kinds


def test_acknowledged_alarm_leaves_the_active_list(rig):
    con, log = rig["con"], rig["log"]
    con.keys("a")
    # the imbalance is over within a simulated minute; the latching alarm stays, unacknowledged
    m = con.wait_for(r"^! cell_overvoltage\s+critical\s+UNACKED", timeout=45)
    assert m
    # wait until the condition itself is gone (cell below the hysteresis band for longer than
    # alarm_clear_s): from then on only the latch keeps the alarm in the active list
    limit_v = 3.55 - 0.05
    deadline = time.monotonic() + 60
    while True:
        snaps = [s for _t, s in list(log.snaps)]
        high = [s["t_s"] for s in snaps if s["points"]["cell_v_max"][0] >= limit_v]
        if high and snaps[-1]["t_s"] - high[-1] > 10.0 + 3 * SPEED:
            break
        assert time.monotonic() < deadline, "the cell imbalance did not go away"
        time.sleep(0.3)
    assert log.latest()["alarms"]["active"] >> 2 & 1, "latched: still active before the ack"
    con.wait_for(r"^! cell_overvoltage\s+critical\s+UNACKED")
    con.keys("k")
    con.wait_for(r"Acknowledge \d+ alarm\(s\)\? y/n")
    con.keys("y")
    con.wait_for(r"acknowledged .*cell_overvoltage")
    con.wait_for(r"acked\s+cell_overvoltage", timeout=10)             # the step's EV_ALARM_ACKED, in history
    con.wait_for(r"cleared\s+cell_overvoltage", timeout=10)           # ... and, the latch released, cleared
    text = con.wait_for(r"ACTIVE ALARMS \(\d+\)").string
    active_part = text.split("HISTORY")[0]
    assert "cell_overvoltage" not in active_part, text
    bit = 2
    assert not log.latest()["alarms"]["active"] >> bit & 1
    con.keys("e")                      # the events screen: the alarm's life and the technician's ack
    con.wait_for(r"alarm_acked")
    time.sleep(0.8)
    text = con.screen()
    assert re.search(r"alarm_raised", text) and re.search(r"alarm_cleared", text), text
    assert re.search(r"TUI ack ok\s+acknowledged .*cell_overvoltage", text), text
    _events_shown(log, text)


def test_manual_setpoint_beyond_a_limit_is_clamped_and_says_so(rig):
    con, log = rig["con"], rig["log"]
    con.keys("o", "m")
    con.wait_for(r"Mode: a\)uto m\)anual s\)tandby")
    con.keys("m")
    con.wait_for(r"mode manual requested")
    con.wait_for(r"Mode\s+manual\s+operator manual")
    con.keys("s")
    con.wait_for(r"Battery kW")
    con.type("9999")
    con.keys("Enter")
    m = con.wait_for(r"setpoint \+9999\.0 kW: beyond the limit, CLAMPED to \+([\d.]+) kW by (\w+)")
    limit = float(m.group(1))
    held = [s["commands"]["discharge_limit_kw"] for s in log.window(5)]
    assert min(held) - 0.05 <= limit <= max(held) + 0.05 and limit < 9999
    m = con.wait_for(r"clamped to ([\d.]+) kW by (\w+)")       # what the interlocks applied
    applied = float(m.group(1))
    # the grid-export limit follows load and PV cycle by cycle: what was applied is bounded by the limit
    # held around it (a tenth of a kW above the first one when the load rose meanwhile)
    held_now = [s["commands"]["discharge_limit_kw"] for s in log.window(5)]
    assert applied <= max(held + held_now) + 0.05 and applied < 9999
    s = log.latest()
    assert s["manual"]["requested_kw"] == 9999.0
    assert s["commands"]["battery_kw"] <= s["commands"]["discharge_limit_kw"] + 1e-6
    _shown_matches(_num(r"^Battery\s+([-\d.]+)", con.screen()), _held(log, _pt("battery_kw")), 0.051)
    # back to automatic (the genset request too), every step an audited action
    con.keys("g")
    con.wait_for(r"Genset: r\)un s\)top a\)uto")
    con.keys("a")
    con.wait_for(r"genset back to automatic")
    con.keys("m")
    con.wait_for(r"Mode: a\)uto")
    con.keys("a")
    con.wait_for(r"mode auto requested")
    con.wait_for(r"Mode\s+normal\s+operator auto")


def test_device_read_and_bus_scan_over_the_controllers_bus(rig):
    con = rig["con"]
    con.keys("r")
    con.wait_for(r"Read device")
    con.type("3")                                                     # pcs, third row of D)evices
    con.keys("Enter")
    con.wait_for(r"READ pcs \(modbus unit 3, \d+ ms\)", timeout=15)
    text = con.wait_for(r"power_kw\s+[-\d.e+]+").string
    assert "soc_pct" in text
    con.keys("n")
    con.wait_for(r"Scan \[bus\]")
    con.type("1-8")
    con.keys("Enter")
    m = con.wait_for(r"answering units: ([\d ]+)$", timeout=20)
    found = {int(u) for u in m.group(1).split()}
    assert {1, 2, 3, 4, 5} <= found                                   # the site's five Modbus units
    con.wait_for(r"profile units not answering: none")
    # export: the recording's last hours as CSV, the signed ledger (still verifiable), the audit log
    con.keys("x")
    con.wait_for(r"Export the last N hours")
    con.keys("Enter")
    con.wait_for(r"exported 4 files \(2 h\)", timeout=20)
    exports = sorted((rig["work"] / "out" / "exports").iterdir())
    csv_f = next(p for p in exports if p.suffix == ".csv")
    rows = csv_f.read_text().splitlines()
    assert rows[0].startswith("t_utc,t_s,") and len(rows) > 30        # one row a cycle from the recording
    from controller.carbon.ledger import verify
    ledger = next(p for p in exports if p.name.endswith("-ledger"))
    assert verify(ledger).ok
    audit = [json.loads(x) for x in (rig["work"] / "out" / "audit.jsonl").read_text().splitlines()]
    done = [(a["action"], a["ok"]) for a in audit if a["message"] != "started"]
    for action in ("mode", "battery_kw", "genset", "ack", "read", "scan", "export"):
        assert (action, True) in done, action
    audit_f = next(p for p in exports if p.name.endswith(".audit.jsonl"))
    exported_audit = [json.loads(x) for x in audit_f.read_text().splitlines()]
    assert {"login", "lockout", "ack", "battery_kw"} <= {a.get("action") for a in exported_audit}


def test_overview_is_cheap_on_the_line_and_ascii_mode_is_7_bit(rig):
    con = rig["con"]
    con.keys("o")
    con.wait_for(r"POWER FLOWS")
    time.sleep(2.0)                                                   # past the screen switch
    b0, t0 = con.line_bytes()
    time.sleep(6.0)
    b1, t1 = con.line_bytes()
    rate = (b1 - b0) / (t1 - t0)
    capacity = BAUD / 10.0
    assert 0 < rate < 0.15 * capacity, f"{rate:.0f} B/s on the overview"
    con.keys(chr(12))                                                 # Ctrl-L: a full repaint, for scale
    time.sleep(1.5)
    b2, _ = con.line_bytes()
    # steady state costs well under one full repaint a second
    full = b2 - b1
    assert rate < full, (rate, full)

    # --ascii on a second line: monochrome, 7-bit, through every screen, the keys still on the bottom line
    line_raw = _ascii_capture(rig)
    assert line_raw, "no bytes from the --ascii TUI"
    assert max(line_raw) < 0x80
    assert not re.search(rb"\x1b\[[0-9;]*(3[0-7]|4[0-7])m", line_raw)          # no colour SGR
    for title in (b"POWER FLOWS", b"INTERLOCKS", b"ACTIVE ALARMS", b"LAST GOOD", b"CARBON TODAY", b"UPLINK",
                  b"EVENTS"):
        assert title in line_raw, title
    plain = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", line_raw)
    assert b"O)verview B)attery A)larms D)evices C)arbon U)plink E)vents" in plain


def _ascii_capture(rig) -> bytes:
    """Run `edge-ems tui --ascii` on a pty pair read by SerialLine in-process; go through every screen."""
    d = rig["work"] / "ascii2"
    d.mkdir()
    gw, lap = d / "gw", d / "lap"
    socat = subprocess.Popen([_need("socat"), f"pty,raw,echo=0,link={gw},b{BAUD}",
                              f"pty,raw,echo=0,link={lap},b{BAUD}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (gw.exists() and lap.exists()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lap_fd = open_line(str(lap), BAUD)
        got = bytearray()
        line = SerialLine(lap_fd, BAUD, sink=got.extend).start()
        gw_fd = os.open(gw, os.O_RDWR | os.O_NOCTTY)
        tui = subprocess.Popen([sys.executable, "-m", "controller.cli", "tui", "--ascii", "--socket", str(rig["sock"])],
                               stdin=gw_fd, stdout=gw_fd, stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
        try:
            time.sleep(3.0)
            for k in "obadcueo":
                os.write(lap_fd, k.encode())
                time.sleep(0.5)
        finally:
            tui.terminate()
            tui.wait(timeout=5)
            line.close()
            os.close(gw_fd)
            os.close(lap_fd)
        return bytes(got)
    finally:
        socat.terminate()
        socat.wait(timeout=5)


def test_actions_reach_the_uplink_spool_and_a_stalled_client_never_blocks_the_loop(tmp_path):
    """The socket alone, in-process: every login and action lands in the uplink's spool as an event;
    a client that connects and never reads is skipped and the loop keeps its period."""
    from controller.ipc import hash_pin, start_ipc
    from controller.uplink import make_uplink_hook
    from controller.uplink.topics import EVENT
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    scn = load_scenario("inner-mongolia-mine")
    scn.site["tui"] = {"pin_hash": hash_pin("4321", kind="pbkdf2_sha256"), "lockout_after": 3,
                       "lockout_s": 60.0, "session_s": 600.0}
    uhook, up = make_uplink_hook(scn.site, None, tmp_path / "uplink", clock_status="sim")
    ipc = start_ipc(scn.site, tmp_path / "ipc.sock", publish_hz=20.0)
    ipc.attach_uplink(up)
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("r", run_sim(
        scn, hours=60 / 3600, speed=3.0, hooks=[ipc.hook, uhook], ledger=False)), daemon=True)   # 20 s: the stalled
    # client's socket buffer fills even when a loaded machine starves the publisher thread
    th.start()
    stalled = __import__("socket").socket(__import__("socket").AF_UNIX)
    stalled.connect(str(tmp_path / "ipc.sock"))
    stalled.sendall(b'{"op":"subscribe","hz":20}\n')                   # ... and never reads a byte
    c = IpcClient(tmp_path / "ipc.sock")
    try:
        deadline = time.monotonic() + 300                           # a cold numba cache compiles first
        while ipc.loop is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.request({"op": "login", "pin": "0000"})["error"] == "wrong PIN (2 tries left)"
        assert c.request({"op": "action", "action": "mode", "mode": "manual"})["error"] == "PIN required"
        assert c.request({"op": "login", "pin": "4321"})["ok"]
        assert c.request({"op": "action", "action": "mode", "mode": "standby"})["ok"]
        bad = c.request({"op": "action", "action": "mode", "mode": "turbo"})
        assert not bad["ok"] and "auto, manual, standby" in bad["error"]
        snap = c.request({"op": "snapshot"})
        while snap.get("type") != "snapshot" and time.monotonic() < deadline:
            assert snap.get("error") == "no cycle has run yet", snap     # the loop is set before it publishes
            time.sleep(0.05)
            snap = c.request({"op": "snapshot"})
        assert snap["uplink"]["attached"] is True, snap
    finally:
        th.join(timeout=60)
        c.close()
        stalled.close()
        ipc.close()
    up.spool.flush()
    events = [json.loads(p)["body"] for _s, p in up.spool.pending(EVENT, 0, 1000)]
    up.close()
    tui = [(e["event"], e["value"]["ok"]) for e in events if e["event"].startswith("tui_")]
    assert tui == [("tui_login", False), ("tui_mode", False), ("tui_login", True), ("tui_mode", True),
                   ("tui_mode", False)]
    assert not th.is_alive(), "the loop did not finish: something blocked it"
    stats = result["r"].loop.stats.as_dict()
    assert stats["cycles"] == 60 and stats["max_ms"] < 1000.0       # never waited on the stalled client
    assert ipc.stats["skipped_slow"] + ipc.stats["dropped_clients"] > 0    # the stalled client was skipped


def test_carbon_screen_shows_todays_cfe_and_jobs_from_the_signed_ledger(tmp_path):
    """CFE and per-job figures come from the ledger file's closed intervals, counted even when they
    closed while nobody was attached (the client attaches only after 40 simulated minutes)."""
    from rich.console import Console as RichConsole
    from controller.carbon.ledger import parse_line
    from controller.ipc import start_ipc
    from controller.tui import screens as S
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    scn = load_scenario("inner-mongolia-mine")
    ipc = start_ipc(scn.site, tmp_path / "ipc.sock", publish_hz=50.0)
    clients = []

    def attach_late(loop, image, cmd, events, n):
        if loop.cycle_no == 2400 and not clients:
            clients.append(IpcClient(tmp_path / "ipc.sock"))
    try:
        run_sim(scn, hours=0.8, seed=1, out_dir=tmp_path / "out", hooks=[ipc.hook, attach_late], speed=0.0)
        deadline = time.monotonic() + 10
        while ipc._pub is None:
            assert time.monotonic() < deadline, "no snapshot published after the client attached"
            time.sleep(0.05)
        snap = clients[0].request({"op": "snapshot"})
    finally:
        for c in clients:
            c.close()
        ipc.close()
    intervals = [parse_line(x)[0] for x in (tmp_path / "out" / "ledger").read_bytes().splitlines()]
    intervals = [p for p in intervals if p["kind"] == "interval"]
    assert len(intervals) >= 3
    today = snap["carbon"]["ledger"]["today"]
    assert today["intervals"] == len(intervals) and today["day"] == snap["carbon"]["today"]["day"]
    load = sum(p["cfe"]["load_kwh"] for p in intervals)
    cfe = sum(p["cfe"]["onsite_kwh"] + p["cfe"]["contract_kwh"] + p["cfe"]["grid_kwh"] for p in intervals)
    assert today["cfe_pct"] == pytest.approx(100.0 * cfe / load, abs=0.01)
    assert today["co2_location_kg"] == pytest.approx(sum(p["co2_kg"]["loads_location"] for p in intervals), abs=1e-6)
    con = RichConsole(width=80, record=True, file=open(os.devnull, "w"))
    con.print(S.carbon(clients[0].hello, snap, None, False))
    text = con.export_text()
    assert re.search(rf"CFE today \(ledger\)\s+{today['cfe_pct']:.1f} %", text), text
    for job, j in today["jobs"].items():
        assert re.search(rf"job {re.escape(job[:28])}\s+{j['kwh']:.1f} kWh", text), text
    if not today["jobs"]:                    # no training job in these 48 minutes: the screen says so
        assert "per-job: no jobs reported in today's intervals" in text, text
