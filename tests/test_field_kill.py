"""SIGKILL of the controller at three random moments of a lab run, restarted at once as systemd would
(`Restart=always`): one ledger that verifies (recovery records where a line tore), no 15-minute interval
missing or written twice, every recording segment replays and chains, the spool loses nothing (the
cloud's subscriber sees every seq of the gateway), the state file's billed peak and genset counters come
back. `make test-long` runs it for 30 minutes (EDGE_EMS_KILL_RUN_S=1800); the default is bounded."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_lab import LabProc
from uplink_broker import Subscriber, wait_for

ROOT = Path(__file__).resolve().parents[1]
RUN_S = float(os.environ.get("EDGE_EMS_KILL_RUN_S", "1800"))
NOT_UPLINK = ("/compute/power", "/compute/job", "/compute/headroom", "/compute/defer", "/market")


class CloudSubscriber(Subscriber):
    """The cloud's consumer of the uplink's records; the lab's own publications on the same broker
    (compute platform, market feed) are not uplink records."""

    def _on_message(self, client, userdata, msg):
        if not msg.topic.endswith(NOT_UPLINK):
            super()._on_message(client, userdata, msg)


def _start(lab, data, log):
    return subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--site", str(lab.dir / "site.toml"),
                             "--data-dir", str(data), "--socket", "none", "--mqtt", lab.info["mqtt"]["url"]],
                            cwd=ROOT, stdout=log, stderr=log)


def _started(data, n_boots):
    """Wait on the recording: the new boot has its segment and a first record."""
    segs = sorted((data / "recording").glob("seg-*.rec")) if (data / "recording").exists() else []
    boots = {p.name.split("-")[2] for p in segs}
    return len(boots) >= n_boots and segs and segs[-1].stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(RUN_S + 1800)          # the run itself, plus start-ups, the drain and the replay
def test_sigkill_three_times_loses_nothing(tmp_path):
    rng = random.Random(14)
    # kernels compiled first, as install.sh does on a gateway: a restart then takes seconds, not a compile
    subprocess.run([sys.executable, "-m", "controller.warmup"], cwd=ROOT, check=True, timeout=1200)
    lab = LabProc(tmp_path / "lab")
    port = int(lab.info["mqtt"]["url"].rsplit(":", 1)[1])
    sub = CloudSubscriber(port, topic="edge-ems/v1/+/imm-lab-01/#", client_id="cloud-kill")
    data = tmp_path / "data"
    log = open(tmp_path / "run.log", "ab")
    kills = sorted(rng.uniform(0.1, 0.9) * RUN_S for _ in range(3))
    t0 = time.monotonic()
    try:
        proc = _start(lab, data, log)
        for boot, at in enumerate(kills, start=1):
            wait_for(lambda: _started(data, boot), 300, f"boot {boot} recording")
            while time.monotonic() - t0 < at:
                assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
                time.sleep(min(1.0, at - (time.monotonic() - t0)) if at > time.monotonic() - t0 else 0)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            proc = _start(lab, data, log)                 # systemd's Restart=always
        wait_for(lambda: _started(data, 4), 180, "last boot recording")
        while time.monotonic() - t0 < RUN_S:
            assert proc.poll() is None
            time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, (tmp_path / "run.log").read_text()[-3000:]
        stats = json.loads((tmp_path / "run.log").read_text().strip().splitlines()[-1])
        # the spool drained before exit: the subscriber saw every seq 1..max
        wait_for(lambda: sub.seqs() and len(sub.seqs()) == max(sub.seqs()), 60, "every seq at the subscriber")
        sub.assert_in_order()
    finally:
        sub.close()
        if proc.poll() is None:
            proc.kill()
        lab.close()
    led = subprocess.run([sys.executable, "-m", "controller.cli", "ledger", "verify",
                          str(data / "ledger" / "carbon.ledger")], cwd=ROOT, capture_output=True, text=True)
    assert led.returncode == 0, led.stdout + led.stderr
    assert "none written twice" in led.stdout
    rep = subprocess.run([sys.executable, "-m", "controller.cli", "replay", str(data / "recording"), "--verify"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "4 boot(s)" in rep.stdout
    state = json.loads((data / "state.json").read_text())
    assert "peak_kw" in state["slots"] and "gen_starts" in state["slots"]
    assert stats["cycles"] > 0
    print(f"kills at {[round(k) for k in kills]} s; {led.stdout.strip()}; {rep.stdout.strip()}; "
          f"{len(sub.seqs())} seqs")
