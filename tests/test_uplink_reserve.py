"""Issue 15: with the spool's disk full, the records the uplink never drops (intervals, alarms, events,
command results) go to the preallocated reserve (spool/reserve.bin, fsync'd) instead of living only in
memory: they survive a SIGKILL in that state, and when space returns they move into SQLite in seq order
and the alarm clears. Real full file systems: a small tmpfs (tests/smallfs.py; needs root)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from smallfs import fill, tmpfs

from controller.uplink.hook import Uplink
from controller.uplink.reserve import RESERVE_FILE, Reserve
from controller.uplink.spool import Spool
from controller.uplink.topics import ALARM, CMD_RESULT, EVENT, INTERVAL, NEVER_DROPPED, RECORD_KINDS, TELEMETRY, Topics

SITE, GW = "inner-mongolia-mine", "imm-gw-01"
T0 = 1.75e9
ROOT = Path(__file__).resolve().parents[1]
KINDS = (ALARM, EVENT, INTERVAL, CMD_RESULT, TELEMETRY)
PAD = "x" * 200


@pytest.fixture
def small_fs(tmp_path):
    with tmpfs(tmp_path / "fs", "8m") as mnt:          # room for the 2 MiB reserve and a small spool
        yield mnt


def rows_of(spool: Spool) -> list[tuple[int, dict]]:
    out = []
    for kind in RECORD_KINDS:
        out += [(seq, json.loads(p)) for seq, p in spool.pending(kind, 0, 100_000)]
    return sorted(out, key=lambda r: r[0])


def check_never_dropped(rows, n: int) -> None:
    """Every never-dropped record 0..n-1 exactly once, in the order put, seq strictly increasing."""
    seqs = [seq for seq, _ in rows]
    assert seqs == sorted(set(seqs)) and all(rec["seq"] == seq for seq, rec in rows)
    got = [rec["body"]["i"] for _, rec in rows if rec["kind"] in NEVER_DROPPED and isinstance(rec["body"].get("i"), int)
           and rec["body"]["i"] >= 0]
    want = [i for i in range(n) if KINDS[i % len(KINDS)] in NEVER_DROPPED]
    assert got == want, f"{len(want) - len(set(got) & set(want))} never-dropped records missing"


CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {tests!r})
    from smallfs import fill
    from controller.uplink.spool import Spool
    KINDS = {kinds!r}
    s = Spool({data!r}, {site!r}, {gw!r}, min_free_bytes=0)
    s.put("event", {t0!r}, {{"i": -1, "phase": "before the disk filled"}})
    ok_before = s.flush(10)
    fill(__import__("pathlib").Path({fs!r}), 0)
    for i in range({n}):
        s.put(KINDS[i % len(KINDS)], {t0!r} + i, {{"i": i, "pad": {pad!r}}})
    ok = s.flush(20)
    print(json.dumps({{"ok_before": ok_before, "flushed": ok, "write_error": s.write_error,
                      "reserved": getattr(s, "reserved_total", None), "refused": s.refused}}), flush=True)
    time.sleep(120)
""")


def test_never_dropped_records_survive_a_sigkill_on_a_full_disk(small_fs, tmp_path):
    data, n = small_fs / "spool", 600
    code = CHILD.format(tests=str(ROOT / "tests"), kinds=KINDS, data=str(data), site=SITE, gw=GW, t0=T0,
                        fs=str(small_fs), n=n, pad=PAD)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(child.stdout.readline()), daemon=True)
    reader.start()
    reader.join(60)
    try:
        assert line and line[0], f"the child printed nothing (rc {child.poll()})"
        report = json.loads(line[0])
    finally:
        child.send_signal(signal.SIGKILL)                 # killed while the disk is full
        child.wait(10)
    assert report["ok_before"] and report["write_error"], report          # the disk really refused SQLite
    (small_fs / "filler").unlink()                        # space returns; the controller restarts
    s = Spool(data, SITE, GW, min_free_bytes=0)
    try:
        print("child:", report, "after restart:", s.stats().get("reserve"))
        rows = rows_of(s)
        assert rows[0][1]["body"]["phase"] == "before the disk filled"
        check_never_dropped(rows, n)
        assert report["reserved"] and report["refused"] > 0, report     # telemetry refused, not kept
        assert s.stats()["reserve"]["pending"] == 0 and not s.alarm
        top = s.last_seq
        s.put(EVENT, T0, {"i": -2})
        assert s.flush(5)
        assert s.pending(EVENT, top, 10)[0][0] == top + 1                # the seq line goes on
    finally:
        s.close(5)
    s2 = Spool(data, SITE, GW, min_free_bytes=0)          # a second restart recovers nothing twice
    try:
        assert len(rows_of(s2)) == len(rows) + 1
    finally:
        s2.close(5)


def test_space_returning_moves_the_reserve_into_sqlite_and_clears_the_alarm(small_fs):
    s = Spool(small_fs / "spool", SITE, GW, min_free_bytes=0)
    up = Uplink(s, None, None, Topics(SITE, GW))
    try:
        s.put(EVENT, T0, {"i": -1})
        assert s.flush(5)
        up.supervise(T0)
        assert not s.alarm and not up.active_alarms
        filler = fill(small_fs, 0)
        n = 300
        for i in range(n):
            s.put(KINDS[i % len(KINDS)], T0 + i, {"i": i, "pad": PAD})
        assert s.flush(10), "records put on a full disk are not durable (held in memory only)"
        assert s.write_error and s.reserve_pending > 0 and s.alarm, s.stats()
        up.supervise(T0 + n)                              # the hook's per-cycle check: the alarm, into the reserve too
        assert "uplink_spool_full" in up.active_alarms
        assert s.flush(5)
        assert len(Reserve(s.dir / RESERVE_FILE).records()) == s.reserve_pending   # on disk, not just in memory
        filler.unlink()                                   # space returns
        s.put(EVENT, T0 + n, {"i": -3})                   # (the writer also retries on its own every RETRY_S)
        deadline = 100
        while (s.reserve_pending or s.write_error) and deadline:
            s.wait_new(0.1)
            deadline -= 1
        assert s.reserve_pending == 0 and s.write_error is None, s.stats()
        up.supervise(T0 + n + 1)
        assert not s.alarm and "uplink_spool_full" not in up.active_alarms
        assert s.flush(5)
        rows = rows_of(s)
        check_never_dropped(rows, n)
        alarms = [(rec["body"]["alarm"], rec["body"]["state"]) for _, rec in rows if "alarm" in rec["body"]]
        assert alarms == [("uplink_spool_full", "raised"), ("uplink_spool_full", "cleared")], alarms
        assert s.refused > 0 and s.rows_by_kind[TELEMETRY] == 0         # telemetry refused while full, counted
        assert s.reserve.records() == [] and s.stats()["reserve"]["moved"] == s.reserved_total > 0
        st = s.stats()
        print("reserve:", st["reserve"], "refused telemetry:", st["refused_telemetry"])
    finally:
        s.close(5)


def test_a_restart_on_a_disk_that_filled_while_down_opens_the_spool_with_the_reserves_blocks(small_fs):
    """SQLite cannot create its -wal/-shm on a full disk ("disk I/O error" at open): the controller must
    still start. The reserve gives part of its own blocks back, the spool opens, nothing stored is lost."""
    s = Spool(small_fs / "spool", SITE, GW, min_free_bytes=0)
    for i in range(20):
        s.put(EVENT, T0 + i, {"i": i})
    assert s.flush(5)
    s.close(5)
    fill(small_fs, 0)
    s = Spool(small_fs / "spool", SITE, GW, min_free_bytes=0)
    try:
        assert "given back" in (s.reserve.problem or "")
        for i in range(20, 40):
            s.put(EVENT, T0 + i, {"i": i})
        assert s.flush(10)
        assert [rec["body"]["i"] for _, rec in rows_of(s)] == list(range(40))
    finally:
        s.close(5)


def test_a_crash_between_the_commit_and_the_reserve_reset_writes_nothing_twice_and_a_torn_frame_is_dropped(tmp_path):
    s = Spool(tmp_path, SITE, GW)
    for i in range(3):
        s.put(EVENT, T0 + i, {"i": i})
    assert s.flush(5)
    s.close(5)
    r = Reserve(tmp_path / RESERVE_FILE)
    enc = s._encode
    frames = [(seq, T0 + seq, EVENT, enc(seq, EVENT, T0 + seq, {"i": seq - 1})) for seq in (2, 3, 4, 5)]
    assert r.append(frames) == 4                          # 2 and 3 are in SQLite already, 4 and 5 are not
    torn_at = r.end
    r.append([(6, T0 + 6, EVENT, enc(6, EVENT, T0 + 6, {"i": 5}))])
    os.pwrite(r.fd, b"\xff" * 8, torn_at + 30)            # the last frame cut by the crash
    r.close()
    s2 = Spool(tmp_path, SITE, GW)
    try:
        rows = rows_of(s2)
        assert [seq for seq, _ in rows] == [1, 2, 3, 4, 5]
        assert [rec["body"]["i"] for _, rec in rows] == [0, 1, 2, 3, 4]
        assert s2.last_seq == 5 and s2.reserve.records() == []
    finally:
        s2.close(5)


def test_reserve_size_is_checked_and_preallocated(tmp_path):
    for bad in (0, 1024, True, 1.5e6, "2m"):
        with pytest.raises(ValueError, match="reserve_bytes"):
            Reserve(tmp_path / "r.bin", bad)
    r = Reserve(tmp_path / "r.bin", 1 << 20)
    assert r.size == os.stat(tmp_path / "r.bin").st_size == 1 << 20 and r.problem is None
    assert os.stat(tmp_path / "r.bin").st_blocks * 512 >= 1 << 20   # real blocks, not a sparse file
    r.close()
