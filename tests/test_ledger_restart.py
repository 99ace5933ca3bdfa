"""The gateway's one ledger across SIGKILLs: real child processes run the carbon hook on a DataDir, are
killed at random moments and restarted; afterwards `ledger verify` passes over the one file, no 15-minute
interval is written twice, and the energy integrated equals the time the children ran (minus at most one
checkpoint period per kill), so no interval's energy is missing or counted twice."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from controller.carbon.ledger import verify
from controller.cli import main
from controller.runtime.datadir import DataDir
from drivers.isotime import utc_epoch
from smallfs import small_fs  # noqa: F401 (fixture)

SPEED = 300.0             # simulated seconds per real second: an interval every 3 s
T0 = 1767225600.0         # 2026-01-01T00:00:00Z
CKPT_S = 60.0
IT_KW = 50.0

CHILD = r"""
import signal, sys, time
from controller.carbon.account import gap_limit_s
from controller.carbon.hook import make_carbon_hook
from controller.points import INDEX, Q_OK, new_image
from controller.runtime.datadir import DataDir
sys.path.insert(0, sys.argv[4])
from test_carbon_handcheck import CFG, CARBON
T0, W0, SPEED = float(sys.argv[2]), float(sys.argv[3]), %(speed)r
class Loop:
    period_s = 10.0
hook = make_carbon_hook(CFG, DataDir(sys.argv[1]).ensure(), carbon=CARBON, checkpoint_every_s=%(ckpt)r,
                        clock_status=lambda: "synchronised")
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
img = new_image()
for name, x in dict(grid_kw=60.0, pv_kw=0.0, pv_available_kw=0.0, battery_kw=0.0, genset_kw=0.0,
                    genset_running=0.0, it_kw=%(it)r, cooling_kw=6.0, aux_kw=4.0, soc_pct=50.0).items():
    img["value"][INDEX[name]] = x
    img["quality"][INDEX[name]] = Q_OK
first, prev, dropped = True, None, 0.0
while not stop:
    img["t_s"] = T0 + (time.time() - W0) * SPEED
    hook(Loop, img, None, None, 0)
    t = float(img["t_s"])
    if first:
        print("ready %%r" %% t, flush=True)
        first = False
    elif t - prev > gap_limit_s(Loop.period_s):
        dropped += t - prev                   # a stall of this process: the ledger rightly leaves it out
    prev = t
    print("t %%r %%r" %% (t, dropped), flush=True)   # the last cycle that ran, whenever the kill comes
    time.sleep(0.01)
hook.close()
print("closed", flush=True)
""" % {"speed": SPEED, "ckpt": CKPT_S, "it": IT_KW}


def _start(d, w0):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(d), str(T0), str(w0), os.path.dirname(__file__)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line and line[0] == "ready", line
    return proc, float(line[1])


def _ran_s(proc, t_ready):
    """Simulated seconds the child integrated: its last cycle's stamp (read after the kill, so a parent
    descheduled before the kill does not count time the child never ran) less its own stalls."""
    t_last, dropped, closed = t_ready, 0.0, False
    for line in proc.stdout:
        word = line.split()
        if word and word[0] == "t":
            t_last, dropped = float(word[1]), float(word[2])
        closed = closed or line.strip() == "closed"
    return t_last - t_ready - dropped, closed


def test_sigkill_at_random_moments_one_ledger_no_interval_missing_or_twice(tmp_path):
    rng = random.Random(14)
    dd = DataDir(tmp_path / "data")
    w0 = time.time()
    ran_s, kills = 0.0, 0
    for k in range(5):
        proc, t_ready = _start(dd.root, w0)
        if k == 4:                                # the last one stops as systemd would: SIGTERM, clean close
            time.sleep(rng.uniform(0.3, 2.5))
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        else:
            time.sleep(rng.uniform(0.3, 2.5))      # 90..750 simulated seconds, anywhere in an interval
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
        run_s, closed = _ran_s(proc, t_ready)
        proc.stdout.close()
        assert closed == (k == 4)
        ran_s += run_s
        if k == 1:                                # a write torn by a power cut: a fragment at the tail
            with open(dd.ledger, "ab") as f:
                f.write(b'{"clock":"synchronised","co2_kg":{"scope1_di')
    res = verify(dd.ledger, keep=True)
    assert res.ok, res.message
    assert res.recoveries == 1 and not res.torn_tail
    assert main(["ledger", "verify", str(dd.ledger), "--pubkey", str(dd.ledger_pub)]) == 0
    assert [p["n"] for p in res.payloads] == list(range(res.records))            # one chain, one counter
    assert sum(p["kind"] == "genesis" for p in res.payloads) == 1                 # never recreated
    ivs = [p for p in res.payloads if p["kind"] == "interval"]
    starts = [utc_epoch(p["t_start"]) for p in ivs]
    assert starts == sorted(set(starts))                                          # none twice
    ckpt = json.loads(dd.ledger_checkpoint.read_text())["interval"]               # the last, still open
    assert ckpt["t_start"] > starts[-1]
    covered = sum(p["covered_s"] for p in ivs) + ckpt["covered_s"]
    it_kwh = sum(p["energy_kwh"]["sinks"]["it"] for p in ivs) + ckpt["e"]["it"]
    assert it_kwh == pytest.approx(IT_KW * covered / 3600.0, rel=1e-6)            # nothing integrated twice
    # each kill loses at most the time since the last checkpoint (plus a cycle); never more time than ran
    assert ran_s - kills * (CKPT_S + 10.0) <= covered <= ran_s + 1e-6, (covered, ran_s)
    # a restart takes ~0.5 s real = ~150 simulated s, shorter than an interval: no slot may lack its record
    assert res.missing_intervals == 0 and starts == [starts[0] + 900.0 * i for i in range(len(starts))]
    assert any(p["partial"] for p in ivs)                                         # the restarts show


def test_ledger_on_a_full_disk_keeps_records_for_later_and_the_chain(small_fs):
    """The disk fills while intervals close: no exception reaches the cycle, the refused intervals wait in
    memory (degraded, counted), what was written stays byte for byte, the torn bytes of the failed write get
    a recovery record when space returns, and every interval ends up in the ledger once, in order."""
    from test_carbon_handcheck import CARBON, CFG, FakeLoop, image
    from controller.carbon.hook import make_carbon_hook
    from smallfs import fill
    dd = DataDir(small_fs / "data").ensure()
    sent = []
    hook = make_carbon_hook(CFG, dd, carbon=CARBON, clock_status=lambda: "synchronised", on_record=sent.append,
                            retry_s=300.0)
    t = T0
    for _ in range(3 * 15):                              # three intervals, 60 s images
        hook(FakeLoop, image(t, soc=50.0), None, None, 0)
        t += 60.0
    assert hook.closed == 2 and not hook.degraded
    written = dd.ledger.read_bytes()
    filler = fill(small_fs, 0)                           # what is left is the ledger's last page: a write tears
    for _ in range(3 * 15):
        hook(FakeLoop, image(t, soc=50.0), None, None, 0)
        t += 60.0
    assert hook.degraded and hook.faults >= 1 and len(hook.pending) >= 2 and "No space left" in hook.last_error
    assert dd.ledger.read_bytes().startswith(written)    # nothing before is touched
    assert verify(dd.ledger).ok                          # a torn tail at most, reported not failed
    filler.unlink()
    for _ in range(15):
        hook(FakeLoop, image(t, soc=50.0), None, None, 0)
        t += 60.0
    assert not hook.degraded and not hook.pending
    hook.close()
    res = verify(dd.ledger, keep=True)
    assert res.ok and not res.torn_tail, res.message
    assert res.recoveries <= 1 and res.missing_intervals == 0
    starts = [p["t_start"] for p in res.payloads if p["kind"] == "interval"]
    assert len(starts) == 6 and starts == sorted(set(starts))
    assert [b["start_s"] for b in sent] == [utc_epoch(s) for s in starts]        # the uplink got each once
