"""While the database refuses every write (a disk full for hours), the records the spool holds in memory
to retry stay bounded: the oldest beyond the cap are dropped and counted, never an unbounded list."""
import sqlite3
import time

from controller.uplink import spool as S
from controller.uplink.topics import EVENT


def test_retry_list_is_bounded_while_the_database_refuses(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "MAX_RETRY_RECORDS", 50)
    sp = S.Spool(tmp_path / "spool", "site", "gw")
    def refuse(batch):
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(sp, "_commit", refuse)
    for i in range(600):
        sp.put(EVENT, 1.0 + i, {"event": "x", "i": i})
    deadline = time.monotonic() + 30
    while sp.retry_dropped < 550 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sp.retry_dropped == 550, sp.stats()
    assert sp.stats()["retry_dropped"] == 550 and sp.write_error
