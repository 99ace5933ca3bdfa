"""`edge-ems selftest`: is this gateway ready to control the site? A verdict a technician can act on.

Checks, in order: the site profile; every bus it names (port present and openable, CAN interface up, TCP
server reachable, or 'simulated'); every field device polled once through the field factory (OK with what
it read, or FAIL with why: port, no answer, exception replies, no CAN frame); the clock (a sane year, NTP sync from timedatectl where there is one); free space and write
access in the data dir; the keys dir; the numba kernels (compiled or loaded from the cache); one `step` on a
synthetic image, whose commands must be finite and within the profile's limits.
Exit 0 when nothing FAILed (WARN lines are worth a look but do not stop the gateway), else 1.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OK, WARN, FAIL, INFO = "OK", "WARN", "FAIL", "INFO"
DEFAULT_SITE = "/etc/edge-ems/site.toml"
DEFAULT_DATA_DIR = "/var/lib/edge-ems"
MIN_FREE_MB, LOW_FREE_MB = 200, 1000


@dataclass
class Check:
    status: str
    what: str
    detail: str


class SelfTest:
    def __init__(self, site: str, data_dir: str, timeout_s: float = 2.0):
        self.site, self.data_dir, self.timeout_s = site, Path(data_dir), timeout_s
        self.checks: list[Check] = []
        self.cfg = None

    def add(self, status: str, what: str, detail: str) -> None:
        self.checks.append(Check(status, what, detail))

    # --- profile -------------------------------------------------------------------------------------------
    def check_profile(self) -> None:
        from controller.config import load_site
        from controller.schema import ProfileError
        try:
            self.cfg = load_site(self.site)
        except ProfileError as exc:
            self.add(FAIL, "profile", f"{self.site}: {len(exc.problems)} problem(s)")
            for problem in exc.problems[:10]:
                self.add(FAIL, "", f"  {problem}")
            return
        except OSError as exc:
            self.add(FAIL, "profile", f"{self.site}: cannot read ({exc.strerror or exc})")
            return
        cfg = self.cfg
        kind = "all simulated" if cfg.all_simulated else "field devices"
        self.add(OK, "profile", f"{cfg.path}: site {cfg.name}, gateway {cfg['site']['gateway_id']}, "
                                f"{len(cfg['devices'])} devices ({kind})")

    # --- buses ---------------------------------------------------------------------------------------------
    def check_buses(self) -> None:
        if self.cfg is None:
            return
        for name, bus in sorted(self.cfg.get("buses", {}).items()):
            devs = [d for d in self.cfg["devices"] if d["bus"] == name]
            field = [d["name"] for d in devs if not d["simulated"]]
            label = f"bus {name}"
            where = bus.get("port") or bus.get("channel") or ""
            if bus["kind"] == "sim" or (devs and not field):
                self.add(OK, label, f"simulated ({', '.join(d['name'] for d in devs) or 'no devices'})")
            elif not devs:
                self.add(INFO, label, f"{bus['kind']} {where}: no device uses it, not checked")
            elif bus["kind"] == "modbus_rtu":
                self.add(*self._serial_result(label, bus, field))
            elif bus["kind"] == "can":
                self.add(*self._can_result(label, bus, field))
            elif bus["kind"] == "modbus_tcp":
                self.add(*self._tcp_result(label, bus, field))
            elif bus["kind"] == "network":
                self.add(INFO, label, f"network inputs over MQTT ({', '.join(d['name'] for d in devs)})")

    def _tcp_result(self, label: str, bus: dict, field: list[str]) -> tuple[str, str, str]:
        import socket
        where = f"{bus['host']}:{bus['port']}"
        try:
            socket.create_connection((bus["host"], bus["port"]), timeout=self.timeout_s).close()
        except OSError as exc:
            return FAIL, label, f"tcp {where}: cannot connect: {exc} ({', '.join(field)})"
        return OK, label, f"tcp {where} accepts connections ({', '.join(field)})"

    # --- devices -------------------------------------------------------------------------------------------
    def check_devices(self) -> None:
        """Each field device polled once, as the running controller would build and poll it."""
        if self.cfg is None or self.cfg.all_simulated:
            return
        from drivers.factory import build_field_devices
        try:
            field = build_field_devices(self.cfg)
        except ValueError as exc:                       # a profile that does not exist or fit (ProfileError)
            self.add(FAIL, "devices", str(exc))
            return
        try:
            for name, dev in field.devices.items():
                self.add(*self._poll_device(name, dev))
        finally:
            field.close()

    def _poll_device(self, name: str, dev) -> tuple[str, str, str]:
        from drivers.base import QUALITY_OK
        label = f"device {name}"
        got: dict = {}

        def sink(_dev, point, value, _t, quality):
            got[point] = (value, quality)
        now = time.monotonic()
        dev.acquire(now, sink)
        if getattr(dev, "kind", "") == "bms" and hasattr(dev, "drain"):      # CAN: frames come on their own
            deadline = now + max(self.timeout_s, 2.0)
            while time.monotonic() < deadline and not any(q == QUALITY_OK for _v, q in got.values()):
                time.sleep(0.05)                                             # frames every ~1 s, nothing to await
                dev.acquire(time.monotonic(), sink)
        fresh = {p: v for p, (v, q) in got.items() if q == QUALITY_OK}
        where = getattr(dev, "url", "") or getattr(getattr(dev, "bus", None), "url", "")
        unit = f" unit {dev.unit}" if hasattr(dev, "unit") else ""
        if fresh:
            shown = ", ".join(f"{p}={v:g}" for p, v in list(fresh.items())[:3])
            return OK, label, f"{where}{unit}: {len(fresh)}/{len(got)} points ({shown})"
        reason = (getattr(dev, "open_error", "") or getattr(getattr(dev, "bus", None), "open_error", "")
                  or getattr(dev, "last_error", "") or ("no CAN frame within "
                                                        f"{max(self.timeout_s, 2.0):.0f} s" if hasattr(dev, "drain")
                                                        else "no point read"))
        return FAIL, label, f"{where}{unit}: {reason}"

    def _serial_result(self, label: str, bus: dict, field: list[str]) -> tuple[str, str, str]:
        port = bus.get("port", "")
        users = ", ".join(field)
        if not port:
            return FAIL, label, f"modbus_rtu with no port set ({users})"
        if "://" not in port and not os.path.exists(port):
            return FAIL, label, f"{port} does not exist ({users}): check the RS-485 adapter and the profile"
        try:
            import serial
            s = serial.serial_for_url(port, baudrate=bus["baud"], parity=bus["parity"], timeout=0.1,
                                      do_not_open=True)
            s.open()
            s.close()
        except PermissionError:
            return FAIL, label, f"{port}: permission denied (the service user needs the dialout group) ({users})"
        except Exception as exc:                       # serial.SerialException and friends
            return FAIL, label, f"{port}: cannot open: {exc} ({users})"
        return OK, label, f"{port} opens at {bus['baud']} 8{bus['parity']}1 ({users})"

    def _can_result(self, label: str, bus: dict, field: list[str]) -> tuple[str, str, str]:
        iface, channel = bus.get("interface", "socketcan"), bus.get("channel", "")
        users = ", ".join(field)
        if iface == "socketcan":
            sys_dir = Path("/sys/class/net") / channel
            if not channel or not sys_dir.exists():
                return FAIL, label, f"CAN interface {channel or '(none)'} not found ({users}): check the adapter"
            state = (sys_dir / "operstate").read_text().strip() if (sys_dir / "operstate").exists() else "?"
            flags = int((sys_dir / "flags").read_text(), 16) if (sys_dir / "flags").exists() else 0
            if not flags & 0x1:                                     # IFF_UP
                return FAIL, label, (f"{channel} is down ({users}): ip link set {channel} up type can "
                                     f"bitrate {bus['bitrate']}")
        try:
            import can
            b = can.Bus(interface=iface, channel=channel, bitrate=bus["bitrate"])
            b.shutdown()
        except Exception as exc:
            return FAIL, label, f"{iface} {channel}: cannot open: {exc} ({users})"
        extra = f", {state}" if iface == "socketcan" else ""
        return OK, label, f"{iface} {channel} opens{extra} ({users})"

    # --- clock ---------------------------------------------------------------------------------------------
    def check_clock(self) -> None:
        now = time.time()
        year = time.gmtime(now).tm_year
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        if not 2024 <= year < 2100:
            self.add(FAIL, "clock", f"{stamp}: the year is not plausible; set the clock (the ledger's times "
                                    "would be wrong)")
            return
        sync = self._ntp_synchronized()
        if sync is None:
            self.add(OK, "clock", f"{stamp} (NTP status unknown: no timedatectl/systemd here)")
        elif sync:
            self.add(OK, "clock", f"{stamp}, NTP synchronized")
        else:
            self.add(WARN, "clock", f"{stamp}, NTP not synchronized (normal while the uplink is down; the "
                                    "ledger marks the clock status)")

    def _ntp_synchronized(self) -> bool | None:
        exe = shutil.which("timedatectl")
        if not exe:
            return None
        try:
            out = subprocess.run([exe, "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                                 text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            return None
        value = out.stdout.strip()
        return {"yes": True, "no": False}.get(value) if out.returncode == 0 else None

    # --- disk and keys -------------------------------------------------------------------------------------
    def check_data_dir(self) -> None:
        d = self.data_dir
        if not d.is_dir():
            self.add(FAIL, "data dir", f"{d} does not exist (install.sh creates it)")
            return
        free_mb = shutil.disk_usage(d).free / 1e6
        writable = self._writable(d)
        size = f"{free_mb / 1000:.1f} GB" if free_mb >= 1000 else f"{free_mb:.0f} MB"
        if not writable:
            self.add(FAIL, "data dir", f"{d}: not writable by {self._user()} ({size} free)")
        elif free_mb < MIN_FREE_MB:
            self.add(FAIL, "data dir", f"{d}: only {size} free (need {MIN_FREE_MB} MB for spool and ledger)")
        elif free_mb < LOW_FREE_MB:
            self.add(WARN, "data dir", f"{d}: {size} free, getting low")
        else:
            self.add(OK, "data dir", f"{d}: {size} free, writable")

    def check_keys(self) -> None:
        keys = self.data_dir / "keys"
        if not keys.is_dir():
            self.add(FAIL, "keys", f"{keys} missing (install.sh creates it)")
            return
        if not self._writable(keys):
            self.add(FAIL, "keys", f"{keys}: not writable by {self._user()}")
            return
        present = sorted(p.name for p in keys.iterdir() if p.is_file())
        mode = keys.stat().st_mode & 0o777
        note = f"{len(present)} key file(s)" if present else "no gateway key yet (created on first start)"
        status = WARN if mode & 0o077 else OK
        extra = f"; mode {mode:o}, should be 700" if status == WARN else ""
        self.add(status, "keys", f"{keys}: writable, {note}{extra}")

    @staticmethod
    def _writable(d: Path) -> bool:
        probe = d / f".selftest-{os.getpid()}"
        try:
            probe.write_bytes(b"x")
            probe.unlink()
            return True
        except OSError:
            return False

    @staticmethod
    def _user() -> str:
        try:
            import pwd
            return pwd.getpwuid(os.getuid()).pw_name
        except (ImportError, KeyError):
            return f"uid {os.getuid()}"

    # --- kernels and one step ------------------------------------------------------------------------------
    def check_kernels(self) -> None:
        """Numba's own counters say whether the kernels came from the cache: its index is keyed by CPU model,
        CPU features and numba version, so a gateway on a different CPU or a new numba misses and compiles."""
        cache = Path(os.environ.get("NUMBA_CACHE_DIR", "?"))
        try:
            from controller.warmup import warmup
            seconds = warmup()
            from controller.core.step import step
            hits, misses = sum(step.stats.cache_hits.values()), sum(step.stats.cache_misses.values())
        except Exception as exc:
            self.add(FAIL, "kernels", f"did not compile: {type(exc).__name__}: {exc}")
            return
        how = "loaded from the cache" if hits and not misses else "compiled for this CPU"
        self.add(OK, "kernels", f"{how} in {seconds:.1f} s ({cache})")
        if not os.access(cache, os.W_OK):
            self.add(WARN, "kernels", f"{cache} is not writable: every start compiles again (slow)")

    def check_step(self) -> None:
        from controller.core import layout as L
        from controller.core.step import step
        from controller.params import build_params
        from controller.points import INDEX, N_POINTS, Q_OK
        if self.cfg is None:
            params = np.zeros(L.N_PARAMS)
            params[L.P_PERIOD_S], params[L.P_STRATEGY] = 1.0, L.STRATEGY_RULE
            limit = float("inf")
        else:
            params = build_params(self.cfg)
            limit = max(params[L.P_CHARGE_MAX_KW], params[L.P_DISCHARGE_MAX_KW], params[L.P_PCS_RATED_KW])
        value = np.zeros(N_POINTS)
        quality = np.full(N_POINTS, Q_OK, dtype=np.uint8)
        synthetic = {"grid_kw": 40.0, "pv_kw": 20.0, "pv_available_kw": 20.0, "soc_pct": 55.0, "soh_pct": 98.0,
                     "battery_v": 51.2, "battery_temp_c": 25.0, "bms_cvl_v": 56.0, "bms_ccl_a": 200.0,
                     "bms_dcl_a": 200.0, "cell_v_max": 3.31, "cell_v_min": 3.29, "cell_temp_max_c": 26.0,
                     "cell_temp_min_c": 24.0, "bms_charge_enable": 1.0, "bms_discharge_enable": 1.0,
                     "it_kw": 50.0, "cooling_kw": 8.0, "aux_kw": 2.0, "grid_available": 1.0, "grid_price": 0.5,
                     "grid_co2_kg_per_kwh": 0.6, "ambient_c": 15.0, "genset_available": 1.0, "fuel_pct": 80.0,
                     "op_genset": -1.0}
        for name, v in synthetic.items():
            value[INDEX[name]] = v
        t_s = time.time()
        state = L.new_state(t_s - params[L.P_PERIOD_S])
        try:
            t0 = time.perf_counter()
            out = step(params, state, t_s, value, quality)     # (state, cmd, events, n_events, ...)
            state, cmd = out[0], out[1]
            ms = (time.perf_counter() - t0) * 1e3
        except Exception as exc:
            self.add(FAIL, "step", f"one cycle on a synthetic image raised {type(exc).__name__}: {exc}")
            return
        if not (np.all(np.isfinite(cmd)) and np.all(np.isfinite(state))):
            self.add(FAIL, "step", "one cycle on a synthetic image gave non-finite commands or state")
        elif abs(cmd[L.C_BATTERY_KW]) > limit + 1e-9:
            self.add(FAIL, "step", f"battery command {cmd[L.C_BATTERY_KW]:.1f} kW exceeds the profile's "
                                   f"{limit:.1f} kW")
        else:
            self.add(OK, "step", f"one cycle on a synthetic image in {ms:.2f} ms: battery "
                                 f"{cmd[L.C_BATTERY_KW]:+.1f} kW, genset {'run' if cmd[L.C_GENSET_RUN] else 'off'}")

    # --- all -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        for check in (self.check_profile, self.check_buses, self.check_devices, self.check_clock,
                      self.check_data_dir, self.check_keys, self.check_kernels, self.check_step):
            try:
                check()
            except Exception as exc:                       # a check must never hide the others
                self.add(FAIL, check.__name__.removeprefix("check_"), f"{type(exc).__name__}: {exc}")
        return self.report()

    def report(self, out=None) -> int:
        out = out or sys.stdout
        fails = sum(c.status == FAIL for c in self.checks)
        warns = sum(c.status == WARN for c in self.checks)
        print(f"edge-ems selftest ({os.uname().machine}, Python {sys.version.split()[0]})", file=out)
        for c in self.checks:
            print(f"  {c.status:<4}  {c.what:<10}  {c.detail}", file=out)
        if fails:
            print(f"NOT READY: {fails} check(s) FAILED, {warns} warning(s). Fix the FAIL lines, then run "
                  "`edge-ems selftest` again.", file=out)
        else:
            print(f"READY: all checks passed, {warns} warning(s).", file=out)
        return 1 if fails else 0


def selftest(site: str = DEFAULT_SITE, data_dir: str | None = None) -> int:
    data_dir = data_dir or os.environ.get("EDGE_EMS_DATA_DIR") or DEFAULT_DATA_DIR
    return SelfTest(site, data_dir).run()
