"""While the database refuses every write (a disk full for hours) and the spool's reserve is full too,
the records the spool holds in memory to retry stay bounded: the oldest beyond the cap are dropped and
counted, never an unbounded list."""
import sqlite3
import time

from controller.uplink import spool as S
from controller.uplink import spool_writer as W
from controller.uplink.reserve import MIN_RESERVE
from controller.uplink.topics import EVENT


def test_retry_list_is_bounded_once_the_reserve_is_full_too(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "MAX_RETRY_RECORDS", 50)
    sp = S.Spool(tmp_path / "spool", "site", "gw", reserve_bytes=MIN_RESERVE)

    def refuse(*_):
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(sp, "_commit", refuse)
    for i in range(600):
        sp.put(EVENT, 1.0 + i, {"event": "x", "i": i, "pad": "p" * 200})
    deadline = time.monotonic() + 120     # returns as soon as all 600 are accounted for; slack for a loaded CI box

    def held():
        return sum(1 for it in sp._hands.rest() if it[0] == "rec")

    def settled():
        # not merely "all 600 accounted for": the writer takes a batch into its hands before it degrades it,
        # so for a moment (long, on a loaded box) the hands hold all 600 and nothing is reserved yet
        n = held()
        return n <= 50 and sp.reserved_total + sp.retry_dropped + n == 600
    while not settled() and time.monotonic() < deadline:
        sp.wait_new(0.1)
    st = sp.stats()
    assert 0 < sp.reserved_total < 600 and st["reserve"]["pending"] == sp.reserved_total, st
    assert held() == 50, st
    assert sp.retry_dropped == 600 - sp.reserved_total - 50 and st["retry_dropped"] == sp.retry_dropped
    assert sp.write_error and sp.alarm
