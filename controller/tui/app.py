"""`edge-ems tui`: the technician's console over the controller's local socket (controller/ipc/).

Runs on the gateway's serial console (115200 8N1, a VT100-class emulator, 80x24) as well as in any
terminal. Screens are one key each (bottom line); actions sit behind the site PIN. Output goes through
`term.DiffScreen`: only changed cells are sent, at most `--fps` frames a second, snapshots at 2 Hz.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from controller.tui import screens as S

KEY_TO_SCREEN = {k: name for k, name, _ in S.SCREENS}
KEY_TO_SCREEN.update({str(i + 1): name for i, (_, name, _) in enumerate(S.SCREENS)})
# action keys (behind the PIN) -> the App method that asks for the action's arguments
ACTION_KEYS = {"m": "ask_mode", "s": "ask_setpoint", "g": "ask_genset", "k": "ask_ack", "x": "ask_export",
               "r": "ask_read", "n": "ask_scan"}


class App:
    def __init__(self, client, fd_in: int, fd_out: int, ascii: bool = False, fps: float = 4.0, hz: float = 2.0,
                 size: tuple[int, int] | None = None, banner: str = ""):
        from controller.tui.term import DiffScreen, terminal_size
        self.client = client
        self.hello = client.hello
        self.fd_in, self.fd_out = fd_in, fd_out
        self.width, self.height = size or terminal_size(fd_out)
        self.screen = DiffScreen(fd_out, self.width, self.height, ascii)
        self.ascii = ascii
        self.fps, self.hz = fps, hz
        self.current = "overview"
        self.snap = None
        self.hist = None
        self.session = False
        self.message = (banner, "bold") if banner else ("", "")
        self.prompt = None
        self.pending: dict = {}
        self.after_login = None
        self.dirty = True
        self.quit = False
        self.next_frame = 0.0
        self.next_history = 0.0
        self.ui: dict = {"field": None,        # last device read / bus scan result, for the devices screen
                         "audit": {}}          # seq -> audit record whole (the snapshot has brief ones)
        self.audit_pending = False
        self.next_audit = 0.0

    # -- requests ----------------------------------------------------------------------------------
    def request(self, obj: dict, on_reply) -> None:
        rid = self.client.send(obj)
        self.pending[rid] = on_reply

    def say(self, text: str, style: str = "") -> None:
        self.message = (text, style)
        self.dirty = True

    def on_message(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "snapshot":
            self.snap = msg
            self.dirty = True
            self.fetch_audit()
        elif kind == "history":
            self.hist = msg
            self.dirty = True
        elif kind == "session":
            self.session = bool(msg.get("ok"))
            self.say(msg.get("message", ""), "bold")
        elif kind == "result":
            cb = self.pending.pop(msg.get("id"), None)
            if cb is not None:
                cb(msg)

    AUDIT_SCREENS = ("events", "uplink")

    def fetch_audit(self) -> None:
        """The messages of the audit records the snapshot lists (it carries only their server-made
        fields): fetched with the audit op while a screen shows them, when one is missing, at most every
        2 s (the socket rate-limits requests; a refusal just waits for the next try)."""
        snap = self.snap
        if snap is None or self.current not in self.AUDIT_SCREENS or self.audit_pending:
            return
        have = self.ui["audit"]
        missing = [r["seq"] for r in snap.get("audit", []) if r["seq"] not in have]
        now = time.monotonic()
        if not missing or now < self.next_audit:
            return
        self.next_audit = now + 2.0
        self.audit_pending = True

        def done(msg):
            self.audit_pending = False
            if msg.get("ok"):
                for rec in msg.get("audit", []):
                    have[rec["seq"]] = rec
                for seq in sorted(have)[:-50]:              # the screens show at most the last 20
                    del have[seq]
                self.dirty = True
        self.request({"op": "audit", "since": min(missing) - 1, "n": 20}, done)

    def result_text(self, msg: dict) -> None:
        if msg.get("ok"):
            self.say(msg.get("message", "ok"), "bold")
        else:
            if msg.get("error") == "PIN required":
                self.session = False
            self.say(msg.get("error", "refused"), "bold reverse")

    # -- actions -----------------------------------------------------------------------------------
    def need_session(self, then) -> None:
        if self.session:
            then()
        else:
            self.after_login = then
            self.open_pin()

    def open_pin(self) -> None:
        if not self.hello["pin"]["configured"]:
            self.say("no PIN configured in the site profile ([tui] pin_hash): actions disabled", "bold reverse")
            self.after_login = None
            return
        self.prompt = {"label": "PIN (Enter; Esc cancels): ", "buf": "", "secret": True, "submit": self.login}

    def login(self, pin: str) -> None:
        def done(msg):
            self.session = bool(msg.get("ok"))
            self.result_text(msg)
            then, self.after_login = self.after_login, None
            if self.session and then is not None:
                then()
        self.request({"op": "login", "pin": pin}, done)

    def action(self, **kw) -> None:
        self.request({"op": "action", **kw},
                     self.on_field if kw.get("action") in ("read", "scan") else self.result_text)

    def ask_mode(self) -> None:
        self.prompt = {"label": "Mode: a)uto m)anual s)tandby (Esc cancels) ", "choices": {
            "a": lambda: self.action(action="mode", mode="auto"),
            "m": lambda: self.action(action="mode", mode="manual"),
            "s": lambda: self.action(action="mode", mode="standby")}}

    def ask_setpoint(self) -> None:
        def submit(text):
            try:
                kw = float(text)
            except ValueError:
                self.say(f"not a number: {text!r}", "bold reverse")
                return
            self.action(action="battery_kw", kw=kw)
        self.prompt = {"label": "Battery kW (+ discharge, - charge; Enter): ", "buf": "", "submit": submit}

    def ask_genset(self) -> None:
        self.prompt = {"label": "Genset: r)un s)top a)uto (Esc cancels) ", "choices": {
            "r": lambda: self.action(action="genset", run=True),
            "s": lambda: self.action(action="genset", run=False),
            "a": lambda: self.action(action="genset", run=None)}}

    def ask_ack(self) -> None:
        unacked = self.snap["alarms"]["unacked"] if self.snap else 0
        n = bin(unacked).count("1")
        if not n:
            self.say("no unacknowledged alarms")
            return
        self.prompt = {"label": f"Acknowledge {n} alarm(s)? y/n ", "choices": {
            "y": lambda: self.action(action="ack", bits=unacked), "n": lambda: self.say("not acknowledged")}}

    def ask_read(self) -> None:
        names = [d["name"] for d in self.hello["devices"]]

        def submit(text):
            text = text.strip()
            name = names[int(text) - 1] if text.isdigit() and 1 <= int(text) <= len(names) else text
            self.say(f"reading {name}...")
            self.current = "devices"
            self.action(action="read", device=name)
        self.prompt = {"label": "Read device (number or name, see D)evices): ", "buf": "", "submit": submit}

    def ask_scan(self) -> None:
        def submit(text):
            parts = text.split()
            if parts and parts[0][0].isdigit():          # "5-20": units on the default bus
                parts.insert(0, "")
            bus = parts[0] if parts else ""
            units = parts[1] if len(parts) > 1 else "1-32"
            self.say(f"scanning {bus or 'the Modbus bus'} units {units}...")
            self.current = "devices"
            self.action(action="scan", bus=bus, units=units)
        self.prompt = {"label": "Scan [bus] [units] (Enter = the Modbus bus, 1-32): ", "buf": "", "submit": submit}

    def on_field(self, msg: dict) -> None:
        self.ui["field"] = msg
        self.result_text(msg)

    def ask_export(self) -> None:
        def submit(text):
            try:
                hours = float(text or "2")
            except ValueError:
                self.say(f"not a number: {text!r}", "bold reverse")
                return
            self.say("exporting...")
            self.action(action="export", hours=hours)
        self.prompt = {"label": "Export the last N hours (Enter = 2): ", "buf": "", "submit": submit}

    # -- keys --------------------------------------------------------------------------------------
    def on_bytes(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            b = data[i]
            i += 1
            if b == 0x1b and i < len(data) and data[i] in (0x5b, 0x4f):      # CSI / SS3: skip the sequence
                i += 1
                while i < len(data) and not (0x40 <= data[i] <= 0x7e):
                    i += 1
                i += 1
                continue
            self.on_key(b)
        self.dirty = True

    def on_key(self, b: int) -> None:
        ch = chr(b)
        if b == 0x0c:                                         # Ctrl-L: full redraw
            self.screen.invalidate()
            return
        p = self.prompt
        if p is not None:
            if b == 0x1b or b == 0x03:
                self.prompt = None
                self.after_login = None
                self.say("cancelled")
            elif "choices" in p:
                fn = p["choices"].get(ch.lower())
                if fn is not None:
                    self.prompt = None
                    fn()
            elif b in (0x0d, 0x0a):
                self.prompt = None
                p["submit"](p["buf"])
            elif b in (0x7f, 0x08):
                p["buf"] = p["buf"][:-1]
            elif b == 0x15:
                p["buf"] = ""
            elif 0x20 <= b < 0x7f and len(p["buf"]) < 20:
                p["buf"] += ch
            return
        key = ch.lower()
        if key in KEY_TO_SCREEN:
            self.current = KEY_TO_SCREEN[key]
            if self.current == "overview":
                self.next_history = 0.0
            self.next_audit = 0.0
            self.fetch_audit()
        elif key == "q" or b == 0x03:
            self.quit = True
        elif key == "p":
            if self.session:
                self.request({"op": "logout"}, lambda m: self.say("logged out"))
                self.session = False
            else:
                self.open_pin()
        elif key in ACTION_KEYS:
            self.need_session(getattr(self, ACTION_KEYS[key]))

    # -- drawing -----------------------------------------------------------------------------------
    def frame(self) -> list:
        from rich.text import Text
        body_h = self.height - 4
        if self.snap is None:
            body = Text("waiting for the controller's first snapshot...")
        else:
            try:
                body = S.RENDER[self.current](self.hello, self.snap, self.hist, self.ascii, self.ui)
            except Exception as exc:                      # a screen bug must not kill the console
                body = Text(f"screen {self.current} failed: {exc!r}")
        p = self.prompt
        if p is not None:
            shown = ("*" * len(p["buf"]) if p.get("secret") else p.get("buf", "")) if "buf" in p else ""
            msg = Text.assemble((p["label"], "bold"), shown, ("_", "reverse") if "buf" in p else "")
        else:
            msg = Text(self.message[0][: self.width - 1], style=self.message[1])
        actions = Text(" " + S.ACTIONS, style="dim" if not self.session else "")
        return [(S.header(self.hello, self.snap, self.current, self.session, self.width), 1), (body, body_h),
                (msg, 1), (actions, 1), (S.keys_line(self.current, self.width), 1)]

    def run(self) -> None:
        from controller.tui.term import RawTerminal
        self.client.send({"op": "subscribe", "hz": self.hz})
        sock = self.client.sock
        with RawTerminal(self.fd_in):
            try:
                while not self.quit:
                    now = time.monotonic()
                    if now >= self.next_history and self.current == "overview":
                        self.client.send({"op": "history"})
                        self.next_history = now + 30.0
                    wait = max(0.0, self.next_frame - now) if self.dirty else 1.0
                    r, _, _ = select.select([self.fd_in, sock], [], [], wait)
                    if self.fd_in in r:
                        try:
                            data = os.read(self.fd_in, 256)
                        except OSError:                    # EIO: the line hung up
                            data = b""
                        if not data:
                            break
                        self.on_bytes(data)
                    if sock in r:
                        for msg in self.client.feed():
                            self.on_message(msg)
                    now = time.monotonic()
                    if self.dirty and now >= self.next_frame:
                        self.screen.draw(self.frame())
                        self.dirty = False
                        self.next_frame = now + 1.0 / self.fps
            except ConnectionError:
                self.quit = True
                self.screen.restore()
                os.write(self.fd_out, b"edge-ems tui: the controller closed the socket\r\n")
                return
            self.screen.restore()


# --- command line ----------------------------------------------------------------------------------
def add_tui_parser(sub) -> None:
    p = sub.add_parser("tui", help="the technician console (attaches to a running controller)")
    p.add_argument("--socket", default=None, help="controller socket (default: /run/edge-ems/ipc.sock, "
                   "$XDG_RUNTIME_DIR/edge-ems/ipc.sock)")
    p.add_argument("--ascii", action="store_true", help="monochrome, 7-bit ASCII (plain VT100, no UTF-8)")
    p.add_argument("--demo", action="store_true", help="start a simulated site in the background and attach "
                   "(demo PIN 1234)")
    p.add_argument("--fps", type=float, default=4.0, help="at most this many redraws a second")
    p.add_argument("--hash-pin", action="store_true", help="print a [tui] pin_hash line for a PIN read from stdin")
    p.set_defaults(func=cmd_tui)


DEMO_PIN = "1234"


def start_demo(workdir: Path, speed: float = 1.0, scenario: str | Path | None = None, wire: bool = True,
               lockout_s: float = 60.0) -> tuple[subprocess.Popen, Path]:
    """`edge-ems run` of the inner-mongolia-mine site in the background, its devices simulated (with
    `wire`, the Modbus ones on a pty RS-485 bus and the BMS on virtual CAN, so device reads and bus scans
    are real transactions), a [tui] PIN table added, the socket in workdir. Also the tests' controller."""
    from controller.config import resolve_site
    from controller.ipc import hash_pin
    text = resolve_site("inner-mongolia-mine").read_text()
    if "\n[tui]" not in text:
        text += f'\n[tui]\npin_hash = "{hash_pin(DEMO_PIN)}"\nlockout_after = 3\nlockout_s = {lockout_s}\n'
    site = workdir / "inner-mongolia-mine.toml"
    site.write_text(text)
    sock = workdir / "ipc.sock"
    log = open(workdir / "run.log", "w")
    cmd = [sys.executable, "-m", "controller.cli", "run", "--site", str(site), "--speed", str(speed),
           "--socket", str(sock), "--out", str(workdir / "out")]
    if scenario is not None:
        cmd += ["--scenario", str(scenario)]
    if wire:
        cmd.append("--wire")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    return proc, sock


def wait_for_socket(sock: Path, proc: subprocess.Popen | None, timeout_s: float = 90.0):
    from controller.ipc import IpcClient
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the controller exited with {proc.returncode}")
        if sock.exists():
            try:
                return IpcClient(sock)
            except OSError:
                pass
        time.sleep(0.2)
    raise TimeoutError(f"no controller socket at {sock} after {timeout_s:.0f} s")


def cmd_tui(args) -> int:
    from controller.ipc import IpcClient, client_socket_path, hash_pin
    if args.hash_pin:
        import getpass
        pin = getpass.getpass("PIN: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
        if len(pin) < 4:
            print("edge-ems: a PIN needs at least 4 characters", file=sys.stderr)
            return 2
        print(f'[tui]\npin_hash = "{hash_pin(pin)}"\nlockout_after = 3\nlockout_s = 300.0')
        return 0
    proc = None
    tmp = None
    banner = ""
    try:
        if args.demo:
            tmp = tempfile.TemporaryDirectory(prefix="edge-ems-demo-")
            print("edge-ems tui --demo: starting a simulated inner-mongolia-mine site "
                  f"(log {tmp.name}/run.log)...", flush=True)
            proc, sock = start_demo(Path(tmp.name))
            client = wait_for_socket(sock, proc)
            banner = f"demo site: PIN {DEMO_PIN}; press P to unlock actions"
        else:
            path = Path(args.socket) if args.socket else client_socket_path()
            try:
                client = IpcClient(path)
            except OSError as exc:
                print(f"edge-ems: cannot attach to the controller at {path}: {exc.strerror or exc} "
                      "(is `edge-ems run` running? --socket PATH)", file=sys.stderr)
                return 2
        if client.hello is None:
            print("edge-ems: the controller did not greet", file=sys.stderr)
            return 1
        try:
            os.nice(10)          # the console must never take CPU the control loop needs (a 1-2 core gateway)
        except OSError:
            pass
        fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
        for sig in (signal.SIGTERM, signal.SIGHUP):     # a pulled cable / closed terminal: leave cleanly
            signal.signal(sig, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        app = App(client, fd_in, fd_out, ascii=args.ascii, fps=args.fps, banner=banner)
        try:
            app.run()
        except KeyboardInterrupt:
            app.screen.restore()
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()
