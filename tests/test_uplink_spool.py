"""The durable spool on its own: seq across restarts, ack deletes, quota and eviction, put never blocks."""
import json
import sqlite3

import pytest

from controller.uplink.spool import LOW_WATER, Spool
from controller.uplink.topics import ALARM, EVENT, INTERVAL, TELEMETRY

SITE, GW = "inner-mongolia-mine", "imm-gw-01"


def test_seq_strictly_increasing_across_restarts_and_unacked_records_survive(tmp_path):
    s = Spool(tmp_path, SITE, GW)
    for i in range(10):
        s.put(TELEMETRY, 1.7e9 + i, {"i": i})
    assert s.flush()
    rows = s.pending(TELEMETRY, 0, 100)
    assert [seq for seq, _ in rows] == list(range(1, 11))
    s.ack([1, 2, 3])
    s.close()
    s2 = Spool(tmp_path, SITE, GW)                     # "restart": a new boot id, same seq line
    assert s2.boot_id != s.boot_id and s2.last_seq == 10
    assert [seq for seq, _ in s2.pending(TELEMETRY, 0, 100)] == list(range(4, 11))
    s2.ack(range(4, 11))
    s2.flush()
    s2.put(EVENT, 1.7e9, {"e": 1})
    s2.flush()
    (seq, payload), = s2.pending(EVENT, 0, 10)
    rec = json.loads(payload)
    assert seq == 11 and rec["seq"] == 11 and rec["boot_id"] == s2.boot_id and rec["gateway"] == GW
    assert rec["t"] == "2023-11-14T22:13:20.000Z"
    s2.close()
    # the high-water mark holds even when every row was acknowledged and deleted
    db = sqlite3.connect(tmp_path / "uplink-spool.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0] == "11"


def test_nan_and_numpy_values_do_not_kill_the_writer(tmp_path):
    import numpy as np
    s = Spool(tmp_path, SITE, GW)
    s.put(TELEMETRY, 1.7e9, {"x": float("nan")})
    s.put(TELEMETRY, 1.7e9, {"x": np.float64(1.5), "n": np.int64(3)})
    assert s.flush()
    rows = s.pending(TELEMETRY, 0, 10)
    assert len(rows) == 2 and "unencodable" in json.loads(rows[0][1])["body"]
    assert json.loads(rows[1][1])["body"] == {"x": 1.5, "n": 3.0}
    s.close()


def test_quota_thins_telemetry_and_never_drops_other_kinds(tmp_path):
    quota = 400_000
    s = Spool(tmp_path, SITE, GW, quota_bytes=quota)
    pad = "x" * 400
    for i in range(3000):
        s.put(TELEMETRY, 1.7e9 + 60 * i, {"i": i, "pad": pad})
        if i % 15 == 0:
            s.put(INTERVAL, 1.7e9 + 60 * i, {"i": i, "pad": pad})
        if i % 100 == 0:
            s.put(ALARM, 1.7e9 + 60 * i, {"i": i})
    assert s.flush()
    assert s.total_bytes <= quota
    assert s.rows_by_kind[INTERVAL] == 200 and s.rows_by_kind[ALARM] == 30
    tele = [json.loads(p)["body"]["i"] for _, p in s.pending(TELEMETRY, 0, 10_000)]
    assert tele[-1] == 2999 and len(tele) < 3000        # newest kept, older ones thinned
    gaps = [b - a for a, b in zip(tele, tele[1:])]
    assert max(gaps) > 1 and gaps[-1] == 1               # coarser in the past, full resolution lately
    ev = [json.loads(p)["body"] for _, p in s.pending(EVENT, 0, 100)]
    assert ev and all(e["event"] == "spool_evicted" for e in ev)
    assert sum(e["count"] for e in ev) == s.evicted == 3000 - len(tele)
    assert not s.alarm
    s.close()


def test_only_never_dropped_records_left_refuses_telemetry_and_raises_the_alarm(tmp_path):
    s = Spool(tmp_path, SITE, GW, quota_bytes=50_000)
    for i in range(200):
        s.put(INTERVAL, 1.7e9 + i, {"pad": "y" * 500})
    s.flush()
    assert s.rows_by_kind[INTERVAL] == 200            # over the quota, still all kept
    assert s.alarm and s.refusing_telemetry
    s.put(TELEMETRY, 1.7e9, {"t": 1})
    s.flush()
    assert s.rows_by_kind[TELEMETRY] == 0 and s.refused >= 1
    s.ack(range(1, 201))                               # the link came back and drained
    s.flush()
    s.put(EVENT, 1.7e9, {"poke": 1})                 # next commit re-evaluates
    s.flush()
    assert s.total_bytes < LOW_WATER * s.quota_bytes and not s.refusing_telemetry
    s.close()


def test_put_never_waits_for_fsync(tmp_path):
    """synchronous=FULL commits (fsync) happen in the writer thread; put() is a queue append."""
    s = Spool(tmp_path, SITE, GW)
    for i in range(20_000):
        s.put(TELEMETRY, 1.7e9 + i, {"i": i, "v": [1.0, 2.0, 3.0]})
    assert s.flush(30)
    st = s.stats()
    print("spool stats:", st)
    assert st["committed_rows"] == 20_000 and st["commits"] < 20_000       # batched commits
    assert st["put_p99_us"] < 100, st
    s.close()


def _conforms(schema, value, path="$"):
    """A small JSON Schema subset (type, required, const, enum, properties, additionalProperties)."""
    types = schema.get("type")
    if types:
        types = [types] if isinstance(types, str) else types
        py = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
              "boolean": bool, "null": type(None)}
        assert any(isinstance(value, py[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                   for t in types), f"{path}: {value!r} is not {types}"
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing {key}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _conforms(sub, value[key], f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in set(value) - set(schema.get("properties", {})):
                _conforms(extra, value[key], f"{path}.{key}")


def test_a_simulated_day_spools_records_that_match_the_schemas(tmp_path):
    from pathlib import Path
    from controller.uplink import make_uplink_hook
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    schemas = Path(__file__).resolve().parent.parent / "controller" / "uplink" / "schemas"
    scn = load_scenario("inner-mongolia-mine")
    hook, up = make_uplink_hook(scn.site, None, tmp_path, clock_status="sim")
    run_sim(scn, hours=2, seed=1, hooks=[hook])
    up.spool.flush()
    seen = {}
    for kind, file in ((TELEMETRY, "telemetry"), (INTERVAL, "interval"), (ALARM, "alarm"), (EVENT, "event")):
        schema = json.loads((schemas / f"{file}.json").read_text())
        rows = up.spool.pending(kind, 0, 100_000)
        for _, payload in rows:
            _conforms(schema, json.loads(payload))
        seen[kind] = len(rows)
    assert seen[TELEMETRY] >= 119 and seen[INTERVAL] >= 7 and seen[EVENT] >= 1
    tele = json.loads(up.spool.pending(TELEMETRY, 0, 1)[0][1])["body"]
    soc = tele["points"]["soc_pct"]
    assert tele["cycles"] == 60 and soc["min"] <= soc["mean"] <= soc["max"]
    print("hook cost:", up.stats().get("hook_p99_us"), "us p99")
    up.close()


def test_a_full_disk_refuses_telemetry_keeps_the_rest_and_raises_an_alarm(tmp_path):
    """Free space under min_free_bytes (here: more than any disk has) = a full disk for the spool."""
    from controller.uplink import make_uplink_hook
    from tools.sim.runner import run_sim
    from tools.sim.scenario import load_scenario
    scn = load_scenario("inner-mongolia-mine")
    hook, up = make_uplink_hook(scn.site, None, tmp_path, min_free_bytes=1 << 62, clock_status="sim")
    run_sim(scn, hours=0.1, seed=1, hooks=[hook])
    up.spool.flush()
    s = up.spool
    assert s.disk_low and s.alarm
    assert s.rows_by_kind[TELEMETRY] == 0 and s.refused >= 5          # 6 minutes of summaries refused
    assert s.rows_by_kind[EVENT] >= 1                                  # never-dropped kinds still kept
    alarms = [json.loads(p)["body"] for _, p in s.pending(ALARM, 0, 10)]
    assert {"alarm": "uplink_spool_full", "state": "raised"}.items() <= alarms[0].items()
    up.close()
