"""Faults made on the lab while `edge-ems run` controls it (issue 14, "What must be shown"): a meter gone, a
PCS that ignores writes, the BMS silent mid-run, the data directory on a full tmpfs, a market message with
negative 15-minute prices and a stale market feed. Every fault is applied at a moment read off the recording
as it grows (records replayed so far), never after a bare sleep; the verdicts come from the recording and the
run's own stats line, as an engineer would read them on a gateway."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from controller.core import layout as L
from controller.points import INDEX
from controller.replay import iter_records, open_recording
from controller.segments import recording_files
from smallfs import tmpfs
from test_lab import LabProc

ROOT = Path(__file__).resolve().parents[1]
GRID_KW, SOC = INDEX["grid_kw"], INDEX["soc_pct"]
READY_RECORDS = 6            # records before a fault: past the start-up hold, every device read
BOOT_S = 600               # to the first records: a changed controller/core recompiles the numba kernels first


def records(data: Path) -> list:
    out = []
    rec_dir = data / "recording"
    if not rec_dir.exists() or not list(rec_dir.glob("seg-*.rec")):
        return out
    for f in recording_files(rec_dir):
        try:
            out.extend(iter_records(f))
        except Exception:                   # a segment whose header is still being written
            pass
    return out


def codes(r) -> list[tuple[int, int]]:
    return [(int(c), int(v)) for c, v in r.events]


class Run:
    """`edge-ems run` on the lab in a subprocess, for a bounded number of cycles."""

    def __init__(self, lab, data: Path, cycles: int, site: Path | None = None, *extra: str, logs: Path | None = None):
        self.data = data
        logs = logs or data.parent
        self.out = open(logs / f"{data.name}.out", "w+")
        self.err = open(logs / f"{data.name}.err", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "run", "--site", str(site or lab.dir / "site.toml"),
             "--data-dir", str(data), "--cycles", str(cycles), "--socket", "none", "--mqtt", lab.info["mqtt"]["url"],
             *extra], cwd=ROOT, stdout=self.out, stderr=self.err, text=True)

    def wait_records(self, pred, timeout: float, what: str) -> list:
        """Poll the recording until `pred(records)` holds; fail with what was seen if the run ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = records(self.data)
            if pred(rec):
                return rec
            if self.proc.poll() is not None:
                rec = records(self.data)
                if pred(rec):
                    return rec
                pytest.fail(f"run ended (rc {self.proc.returncode}) before {what}; {len(rec)} records; "
                            f"stderr: {self.stderr()[-2000:]}")
            time.sleep(0.1)                 # polling the file for the awaited event
        pytest.fail(f"no {what} within {timeout} s ({len(records(self.data))} records)")

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def finish(self, timeout: float = 120, stop: bool = False) -> dict:
        """The stats line; `stop`: SIGTERM now (as systemd stops it) instead of waiting for the cycles."""
        if stop and self.proc.poll() is None:
            self.proc.terminate()
        rc = self.proc.wait(timeout)
        self.out.seek(0)
        lines = self.out.read().strip().splitlines()
        assert rc == 0, f"rc {rc}: {self.stderr()[-3000:]}"
        return json.loads(lines[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lp = LabProc(tmp_path_factory.mktemp("faultlab") / "d")
    yield lp
    lp.close()


@pytest.fixture
def clean(lab):
    assert lab.ctl("clear")["ok"]
    yield lab
    lab.ctl("clear")


def edge_ems(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow                       # ~30-60 s each: make test-long
def test_meter_gone_goes_stale_within_max_age_alarms_and_recovers(clean, tmp_path):
    lab = clean
    run = Run(lab, tmp_path / "data", 60)
    try:
        rec = run.wait_records(lambda r: len(r) >= READY_RECORDS and int(r[-1].image["quality"][GRID_KW]) == 0,
                               BOOT_S, "a fresh grid meter")
        assert lab.ctl("fault", "meter", "silent")["ok"]
        t_fault = time.time()
        rec = run.wait_records(lambda r: any(c[0] == L.EV_METER_STALE for x in r for c in codes(x)), 60, "meter_stale")
        n_fault = len(rec)
        assert lab.ctl("clear")["ok"]
        rec = run.wait_records(lambda r: any(c[0] == L.EV_METER_BACK for x in r for c in codes(x)), 60, "meter_back")
        stats = run.finish(stop=True)
    finally:
        run.kill()
    rec = records(run.data)
    after = [r for r in rec if float(r.image["t_s"]) >= t_fault]
    first_bad = next(r for r in after if int(r.image["quality"][GRID_KW]) != 0)
    max_age = 5.0                                            # lab.toml [limits] meter_max_age_s
    assert float(first_bad.image["t_s"]) - t_fault <= max_age + 1.5, (float(first_bad.image["t_s"]) - t_fault)
    evs = [c for r in rec for c in codes(r)]
    assert (L.EV_ALARM_RAISED, L.A_METER_LOST) in evs, evs
    i_stale = next(i for i, r in enumerate(rec) if any(c[0] == L.EV_METER_STALE for c in codes(r)))
    i_back = next(i for i, r in enumerate(rec) if any(c[0] == L.EV_METER_BACK for c in codes(r)))
    assert i_back > i_stale and int(rec[-1].image["quality"][GRID_KW]) == 0
    print(f"\nmeter: stale {float(first_bad.image['t_s']) - t_fault:.2f} s after the fault, meter_stale at record "
          f"{i_stale}, back at {i_back} (n_fault {n_fault}); overruns {stats['overruns']}, p99 {stats.get('p99_ms')} ms")


@pytest.mark.slow                       # ~30-60 s each: make test-long
def test_pcs_ignoring_writes_keeps_the_period(clean, tmp_path):
    lab = clean
    run = Run(lab, tmp_path / "data", READY_RECORDS + 12)
    try:
        run.wait_records(lambda r: len(r) >= READY_RECORDS, BOOT_S, f"{READY_RECORDS} records")
        assert lab.ctl("fault", "pcs", "no-writes")["ok"]
        stats = run.finish()
    finally:
        run.kill()
    rec = records(run.data)
    periods = np.diff([float(r.image["t_s"]) for r in rec])
    figures = (f"overruns {stats['overruns']}, p99 {stats.get('p99_ms')} ms, max cycle gap {periods.max():.2f} s, "
               f"parts {json.dumps(stats.get('parts', {}))[:600]}, host_alarms {list(stats.get('host_alarms', {}))}")
    print("\npcs no-writes:", figures)
    assert stats["overruns"] == 0, figures
    assert any("pcs" in name for name in stats.get("host_alarms", {})), figures      # and it is an alarm


def test_bms_silent_mid_run_battery_to_zero_within_bms_stale_cycles(clean, tmp_path):
    lab = clean
    run = Run(lab, tmp_path / "data", 30)
    try:
        run.wait_records(lambda r: len(r) >= READY_RECORDS and int(r[-1].image["quality"][SOC]) == 0, BOOT_S,
                         "a fresh BMS")
        assert lab.ctl("fault", "bms", "silent")["ok"]
        run.wait_records(lambda r: any(c[0] == L.EV_BMS_STALE for x in r for c in codes(x)), 60, "bms_stale")
        lab.ctl("clear")
        run.finish(stop=True)
    finally:
        run.kill()
    rec = records(run.data)
    i_bad = next(i for i, r in enumerate(rec) if i >= READY_RECORDS and int(r.image["quality"][SOC]) != 0)
    i_zero = next(i for i in range(i_bad, len(rec)) if rec[i].commands[L.C_BATTERY_KW] == 0.0)
    i_stale = next(i for i, r in enumerate(rec) if any(c[0] == L.EV_BMS_STALE for c in codes(r)))
    print(f"\nbms silent: first non-OK soc at record {i_bad}, battery 0 kW at {i_zero} (+{i_zero - i_bad} cycles), "
          f"bms_stale at {i_stale}; battery before {rec[i_bad - 1].commands[L.C_BATTERY_KW]:.1f} kW")
    assert i_zero - i_bad <= 3, (i_bad, i_zero)             # lab.toml [control] bms_stale_cycles
    assert i_stale - i_bad <= 3
    assert all(rec[i].commands[L.C_BATTERY_KW] == 0.0 for i in range(i_stale, i_stale + 1))


@pytest.mark.slow                       # ~30-60 s each: make test-long
def test_data_dir_on_a_full_tmpfs(clean, tmp_path):
    lab = clean
    with tmpfs(tmp_path / "fs", "2m") as mnt:
        data = mnt / "D"
        run = Run(lab, data, 40, logs=tmp_path)           # the logs off the small file system
        try:
            before = run.wait_records(lambda r: len(r) >= READY_RECORDS, BOOT_S, f"{READY_RECORDS} records")
            st = os.statvfs(mnt)
            with open(mnt / "filler", "wb") as f:           # the disk fills up under the running controller
                try:
                    f.write(b"\0" * (st.f_bavail * st.f_frsize))
                except OSError:
                    pass
            n_full = len(records(data))
            stats = run.finish()
        finally:
            run.kill()
        print(f"\nfull disk: {len(before)} records before filling ({n_full} when full); recording "
              f"{stats['recording']}, state file {stats['state_file']['faults']} faults, host_alarms "
              f"{json.dumps(stats.get('host_alarms', {}))[:400]}, overruns {stats['overruns']}, p99 {stats.get('p99_ms')}")
        assert stats["recording"]["dropped"] > 0 or stats["recording"]["faults"] > 0, stats["recording"]
        alarms = stats.get("host_alarms", {})
        assert "recording_degraded" in alarms, alarms
        assert len(records(data)) >= len(before)                 # nothing already stored is lost
        v = edge_ems("replay", str(data / "recording"), "--verify")
        assert v.returncode == 0 or "torn" in (v.stdout + v.stderr), v.stdout + v.stderr
        led = edge_ems("ledger", "verify", str(data / "ledger" / "carbon.ledger"))
        assert led.returncode == 0, led.stdout + led.stderr


def market_site(lab, tmp_path: Path, name: str) -> Path:
    """lab's site.toml with a market device (role market: the mkt_* horizon, feed expected)."""
    text = (lab.dir / "site.toml").read_text()
    if 'role = "market"' not in text:                 # profiles/sites/lab.toml carries it since issue 14
        text += '\n[[devices]]\nname = "market"\nrole = "market"\nbus = "net"\nsimulated = false\n'
    text = re.sub(r'(?m)^strategy = "rule"', 'strategy = "mpc"', text)
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    assert edge_ems("check", "--site", str(p)).returncode == 0, edge_ems("check", "--site", str(p)).stdout
    return p


def replay_states(data: Path):
    """(records, states after each step) - the kernel's plan slots, from the recording alone."""
    from controller.core.step import step
    out_r, out_s = [], []
    for f in recording_files(data / "recording"):
        info = open_recording(f)
        state = info.state0.copy()
        for r in iter_records(f):
            state, *_ = step(info.params, state, float(r.image["t_s"]), np.ascontiguousarray(r.image["value"]),
                             np.ascontiguousarray(r.image["quality"]))
            out_r.append(r)
            out_s.append(state.copy())
    return out_r, out_s


def market_run(lab, tmp_path: Path, name: str, cycles: int = 15) -> tuple[list, list, dict]:
    site = market_site(lab, tmp_path, name)
    run = Run(lab, tmp_path / name, cycles, site)
    try:
        stats = run.finish(180)
    finally:
        run.kill()
    rec, states = replay_states(run.data)
    return rec, states, stats


@pytest.mark.slow                       # ~30-60 s each: make test-long
def test_negative_market_prices_change_the_plan(lab, tmp_path):
    (tmp_path / "neglab").mkdir()
    neg = LabProc(tmp_path / "neglab" / "d", "--market-negative")
    try:
        r_neg, s_neg, st_neg = market_run(neg, tmp_path, "neg")
    finally:
        neg.close()
    lab.ctl("clear")
    r_ref, s_ref, st_ref = market_run(lab, tmp_path, "ref")
    for r in (r_neg, r_ref):
        assert int(r[-1].image["quality"][INDEX["mkt_t0_s"]]) == 0            # the market message is in the image
    imp = [k for k in range(96) if f"mkt_import_{k:02d}" in INDEX]
    neg_prices = [float(r_neg[-1].image["value"][INDEX[f"mkt_import_{k:02d}"]]) for k in imp]
    assert min(neg_prices) < 0, neg_prices
    p_neg = s_neg[-1][[L.S_PLAN_SOC_END_PCT, L.S_PLAN_OBJECTIVE, L.S_PLAN_BATTERY_KW, L.S_PLAN_GRID_KW]]
    p_ref = s_ref[-1][[L.S_PLAN_SOC_END_PCT, L.S_PLAN_OBJECTIVE, L.S_PLAN_BATTERY_KW, L.S_PLAN_GRID_KW]]
    b_neg = [r.commands[L.C_BATTERY_KW] for r in r_neg]
    b_ref = [r.commands[L.C_BATTERY_KW] for r in r_ref]
    print(f"\nmarket: plan (soc_end, objective, battery, grid) negative {p_neg.round(2).tolist()} vs tariff-shaped "
          f"{p_ref.round(2).tolist()}; battery kW last negative {b_neg[-1]:.1f} vs {b_ref[-1]:.1f}; "
          f"min import price {min(neg_prices):.2f}")
    assert s_neg[-1][L.S_PLAN_COUNT] > 0 and s_ref[-1][L.S_PLAN_COUNT] > 0
    assert not np.allclose(p_neg, p_ref), (p_neg, p_ref)


@pytest.mark.slow                       # ~30-60 s each: make test-long
def test_stale_market_feed_alarms_and_falls_back_to_the_tariff(tmp_path):
    (tmp_path / "stalelab").mkdir()
    silent = LabProc(tmp_path / "stalelab" / "d", "--fault", "market=silent")
    try:
        rec, states, stats = market_run(silent, tmp_path, "stale", cycles=12)
    finally:
        silent.close()
    evs = [c for r in rec for c in codes(r)]
    print(f"\nstale market: alarms raised {[L.ALARM_NAMES[v] for c, v in evs if c == L.EV_ALARM_RAISED]}, "
          f"mkt quality {int(rec[-1].image['quality'][INDEX['mkt_t0_s']])}, plan count {states[-1][L.S_PLAN_COUNT]}")
    assert int(rec[-1].image["quality"][INDEX["mkt_t0_s"]]) != 0
    assert (L.EV_ALARM_RAISED, L.A_MARKET_STALE) in evs, evs
    assert states[-1][L.S_PLAN_COUNT] > 0                     # planned anyway, from the profile's tariff
