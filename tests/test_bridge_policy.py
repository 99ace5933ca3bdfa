"""The bridge's rules without a scheduler: the defer/resume policy and its guards against a stand-in adapter
(the same DeferApplier the Slurm runs use, test_bridge_slurm.py), the announcements' life cycle, the
cabinet's messages, and Slurm's two JSON number forms (22.05 plain, 23.02+ {set, infinite, number})."""
from __future__ import annotations

import json

import pytest

from controller.bridge.actions import ActionLog, HoldBook
from controller.bridge.adapter import AdapterError
from controller.bridge.config import SCHEMA
from controller.bridge.defer import DeferApplier
from controller.bridge.jobs import Announcer, SchedJob
from controller.bridge.messages import DeferRequest, Headroom, MessageError, parse_defer, parse_headroom
from controller.bridge.slurm import SlurmAdapter, gpus_of
from controller.schema import Validator
from drivers.compute import parse_job

T0 = 1_800_000_000.0


def defaults(table: str, **over) -> dict:
    v = Validator("t", "")
    cfg = v.walk(SCHEMA.fields[table], over, table)
    assert not v.problems, v.problems
    return cfg


class StandIn:
    name, can_suspend = "stand-in", False

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.fail = False

    def _verb(self, verb, job):
        if self.fail:
            raise AdapterError(f"scontrol {verb} {job.native_id}: exit 1: Slurm says no")
        self.calls.append((verb, job.native_id))
        return "ok"

    def hold(self, job):
        return self._verb("hold", job)

    def release(self, job):
        return self._verb("release", job)

    def suspend(self, job):
        return self._verb("suspend", job)

    def resume(self, job):
        return self._verb("resume", job)


def job(n: int, phase="pending", deferrable=True, held=False, kw=2.0, remaining=3600.0, deadline=T0 + 6 * 3600,
        reason="Resources") -> SchedJob:
    return SchedJob(f"slurm-{n}", str(n), phase, phase.upper(), kw, T0, 3600.0, remaining, deadline, deferrable,
                    "partition 'flex' in slurm.deferrable_partitions" if deferrable else
                    "partition 'batch' not in slurm.deferrable_partitions", held=held, reason=reason)


@pytest.fixture
def rig(tmp_path):
    adapter = StandIn()
    log = ActionLog(str(tmp_path / "actions.jsonl"), stream=open("/dev/null", "w"), clock=lambda: T0)
    bridge = defaults("bridge", site="s", gateway="g", mqtt="mqtt://127.0.0.1", release_when_silent_s=900.0)
    sched = defaults("slurm", deferrable_by="partition", deferrable_partitions=["flex"], guard_s=60.0,
                     min_hold_s=900.0, max_hold_h=12.0)
    ap = DeferApplier(adapter, log, HoldBook(str(tmp_path / "holds.json")), bridge, sched, started_s=T0)
    return ap, adapter, tmp_path


def req(n, action="defer", t=T0, by=None, reason="site short 5.0 kW"):
    return DeferRequest(t, f"slurm-{n}", action, reason, by)


def test_only_deferrable_jobs_are_touched_and_running_ones_only_when_allowed(rig):
    ap, adapter, _ = rig
    jobs = {j.id: j for j in (job(1), job(2, deferrable=False), job(3, phase="running"),
                              job(4, held=True, reason="JobHeldAdmin"), job(5, phase="ended"))}
    out = [ap.request(req(n), jobs, T0 + 1) for n in (1, 2, 3, 4, 5, 6)]
    assert [r["action"] for r in out] == ["hold", "refuse", "refuse", "skip", "skip", "refuse"]
    assert "not deferrable (partition 'batch'" in out[1]["reason"]
    assert "suspend_running = false" in out[2]["reason"]
    assert "held outside the bridge (JobHeldAdmin)" in out[3]["reason"]
    assert out[5]["reason"] == "defer: no such job in the queue"
    assert adapter.calls == [("hold", "1")]
    adapter.can_suspend = True
    assert ap.request(req(3), jobs, T0 + 1)["action"] == "suspend"
    assert ap.request(req(1), jobs, T0 + 2)["action"] == "skip"          # already ours: not held twice
    assert set(ap.holds.held) == {"slurm-1", "slurm-3"}


def test_stale_defer_is_refused_but_resume_always_applies_and_only_to_our_holds(rig):
    ap, adapter, tmp = rig
    jobs = {"slurm-1": job(1), "slurm-4": job(4, held=True, reason="JobHeldAdmin")}
    assert ap.request(req(1, t=T0), jobs, T0 + 601)["action"] == "refuse"
    assert ap.request(req(1, t=T0 + 600), jobs, T0 + 601)["action"] == "hold"
    jobs["slurm-1"] = job(1, held=True, reason="JobHeldAdmin")
    assert ap.request(req(4, "resume", t=T0 - 9999), jobs, T0 + 602)["action"] == "skip"   # an admin's hold
    r = ap.request(req(1, "resume", t=T0 - 9999, reason="green"), jobs, T0 + 700)          # old, still applied
    assert r["action"] == "release" and r["held_s"] == 99.0 and r["reason"] == "resume: green"
    assert adapter.calls == [("hold", "1"), ("release", "1")]
    assert json.loads((tmp / "holds.json").read_text())["held"] == {}
    recs = [json.loads(line) for line in (tmp / "actions.jsonl").read_text().splitlines()]
    assert [r["action"] for r in recs] == ["refuse", "hold", "skip", "release"]


def test_guards_release_at_the_latest_start_after_max_hold_and_when_the_cabinet_is_silent(rig):
    ap, adapter, _ = rig
    jobs = {j.id: j for j in (job(1, deadline=T0 + 7200, remaining=3600), job(2, deadline=None),
                              job(3, deadline=T0 + 48 * 3600))}
    for n in (1, 2, 3):
        ap.request(req(n), jobs, T0)
    jobs = {k: job(int(k[6:]), held=True, reason="JobHeldAdmin", deadline=v.deadline_s, remaining=v.remaining_s)
            for k, v in jobs.items()}

    def tick(t):
        ap.headroom_received(Headroom(t, t + 120, 0.0, 5.0), t)          # the cabinet speaks: the site is short
        return ap.tick(jobs, t)
    assert tick(T0 + 3600 - 61) == []                                      # deadline - remaining - guard_s
    r = tick(T0 + 3600 - 60)
    assert [(x["job"], x["source"]) for x in r] == [("slurm-1", "guard")]
    assert r[0]["reason"].startswith("latest start 2027-01-15T09:00:00Z (deadline 2027-01-15T10:00:00Z")
    assert tick(T0 + 12 * 3600 - 1) == []
    r = tick(T0 + 12 * 3600)                                               # max_hold_h: no job waits longer
    assert [(x["job"], x["source"]) for x in r] == [("slurm-2", "guard"), ("slurm-3", "guard")]
    assert "slurm.max_hold_h" in r[0]["reason"]
    t = T0 + 13 * 3600
    ap.headroom_received(Headroom(t, t + 120, 0.0, 5.0), t)               # then it falls silent
    ap.request(req(9, t=t), {"slurm-9": job(9, deadline=T0 + 48 * 3600)}, t)
    held9 = {"slurm-9": job(9, held=True, reason="JobHeldAdmin", deadline=T0 + 48 * 3600)}
    assert ap.tick(held9, t + 899) == []
    r = ap.tick(held9, t + 901)                                            # the cabinet silent for 900 s
    assert [(x["job"], x["source"]) for x in r] == [("slurm-9", "silent")]


def test_green_headroom_releases_only_when_it_covers_the_job(rig):
    ap, adapter, _ = rig
    ap.request(req(1), {"slurm-1": job(1)}, T0)
    held = {"slurm-1": job(1, held=True, reason="JobHeldAdmin", kw=2.0, remaining=2 * 3600)}

    def tick(t, hourly, valid_s=120.0, short=0.0):
        ap.headroom_received(Headroom(t, t + valid_s, 10.0, short, hourly), t)
        return ap.tick(held, t)
    assert tick(T0 + 1000, [10.0, 2.1]) == []              # hour 2 has 2.1 < 2.0 x 1.1
    assert tick(T0 + 1000, [10.0, 2.2], short=0.5) == []   # short now
    assert tick(T0 + 899, [10.0, 2.2]) == []               # min_hold_s
    ap.headroom_received(Headroom(T0 + 900, T0 + 950, 10.0, 0.0, [10.0, 2.2]), T0 + 900)
    assert ap.tick(held, T0 + 1000) == []                  # past its valid_until: not a signal
    r = tick(T0 + 1000, [10.0, 2.2])
    assert r[0]["source"] == "headroom" and r[0]["action"] == "release" and adapter.calls[-1] == ("release", "1")
    assert r[0]["reason"] == "green headroom 2.2 kW over 2.0 h >= 2.00 kW x 1.1"


def test_a_failed_command_keeps_the_job_and_a_hold_lifted_outside_is_dropped(rig):
    ap, adapter, _ = rig
    ap.request(req(1), {"slurm-1": job(1)}, T0)
    adapter.fail = True
    r = ap.request(req(1, "resume"), {"slurm-1": job(1, held=True, reason="JobHeldAdmin")}, T0 + 5)
    assert r["action"] == "release" and r["ok"] is False and "Slurm says no" in r["detail"]
    assert "slurm-1" in ap.holds.held                       # retried by the guards / next resume
    adapter.fail = False
    r = ap.tick({"slurm-1": job(1, held=False)}, T0 + 10)   # an admin released it
    assert r[0]["source"] == "outside" and "slurm-1" not in ap.holds.held


def test_holds_survive_a_restart_in_the_state_file(tmp_path):
    h = HoldBook(str(tmp_path / "holds.json"))
    h.add("slurm-1", "1", "hold", T0, "site short", T0 + 60)
    assert HoldBook(str(tmp_path / "holds.json")).held == h.held
    (tmp_path / "holds.json").write_text("{not json")
    assert HoldBook(str(tmp_path / "holds.json")).held == {}


def test_announcements_repeat_change_and_end():
    a = Announcer(every_s=300)
    j = job(1, deadline=T0 + 7200)
    first = a.due([j], T0)
    assert [d["state"] for d, _ in first] == ["announced"] and parse_job(first[0][1]).deferrable
    assert a.due([j], T0 + 10) == []                                      # unchanged: not again ...
    assert [d["state"] for d, _ in a.due([j], T0 + 300)] == ["announced"]   # ... until the repeat
    run = job(1, phase="running", deadline=T0 + 7200)
    assert [d["state"] for d, _ in a.due([run], T0 + 301)] == ["running"]
    gone = a.due([], T0 + 1800)                                           # vanished: done, trimmed to now
    assert gone[0][0]["state"] == "done" and gone[0][0]["duration_min"] == 30.0
    b = Announcer()
    b.due([job(2)], T0)
    assert b.due([], T0 + 60)[0][0]["state"] == "cancelled"               # never seen running
    assert Announcer().due([job(3, phase="ended")], T0) == []             # ended before we knew it
    late = job(4, deadline=T0 + 100)                                      # infeasible deadline: left out
    assert "deadline" not in Announcer().due([late], T0)[0][0]


def test_the_cabinets_messages_are_checked():
    d = parse_defer(b'{"v":1,"t":"2026-12-02T10:00:00Z","job":"slurm-1","action":"defer","reason":"x",'
                    b'"resume_by":"2026-12-02T12:00:00Z"}')
    assert d.action == "defer" and d.resume_by_s - d.t_s == 7200
    for bad, key in ((b'{"v":1,"t":"2026-12-02T10:00:00Z","job":"j","action":"pause"}', "'action'"),
                     (b'{"v":1,"t":"2026-12-02T10:00:00","job":"j","action":"defer"}', "no UTC offset"),
                     (b'{"v":2}', "'v'"), (b"[1]", "JSON object"), (b"\xff", "not JSON")):
        with pytest.raises(MessageError, match=key):
            parse_defer(bad)
    h = parse_headroom(json.dumps({"v": 1, "t": "2026-12-02T10:00:00Z", "valid_until": "2026-12-02T10:02:00Z",
                                   "now_kw": 3.0, "short_kw": 0.0, "hourly_kw": [3.0, 1.0, 2.0]}).encode())
    assert h.green_kw_over(0.5) == 3.0 and h.green_kw_over(2.5) == 1.0 and h.green_kw_over(4) == 0.0
    with pytest.raises(MessageError, match="'now_kw'"):
        parse_headroom(b'{"v":1,"t":"2026-12-02T10:00:00Z","valid_until":"2026-12-02T10:02:00Z","short_kw":0,'
                       b'"now_kw":1' + b"0" * 400 + b"}")
    with pytest.raises(MessageError, match=r"hourly_kw\[1\]"):
        parse_headroom(json.dumps({"v": 1, "t": "2026-12-02T10:00:00Z", "valid_until": "2026-12-02T10:02:00Z",
                                   "now_kw": 3.0, "short_kw": 0.0, "hourly_kw": [3.0, True]}).encode())


def test_slurm_json_number_forms_and_tres(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda cmd: f"/usr/bin/{cmd}")
    monkeypatch.setattr("os.access", lambda p, m: True)
    cfg = defaults("slurm", deferrable_by="qos", deferrable_qos=["green"],
                   kw={"default": {"per_gpu_kw": 0.5, "per_cpu_kw": 0.01}})
    a = SlurmAdapter(cfg, run=None)
    new = {"job_id": 12, "job_state": ["PENDING"], "partition": "gpu", "qos": "green", "comment": "",
           "name": "train", "time_limit": {"set": True, "infinite": False, "number": 90},
           "eligible_time": {"set": True, "infinite": False, "number": T0}, "start_time": {"set": False, "number": 0},
           "end_time": {"set": True, "infinite": False, "number": 0}, "deadline": {"set": True, "number": T0 + 86400},
           "state_reason": "JobHeldAdmin", "nodes": "", "node_count": {"set": True, "number": 1},
           "cpus": {"set": True, "number": 8}, "tres_per_node": "gres/gpu:a100=2", "tres_req_str": ""}
    old = dict(new, job_id=13, job_state="PENDING", time_limit="None", eligible_time=T0, deadline=0, qos="normal",
               cpus=0, tres_req_str="cpu=4,mem=1M,node=1,billing=4", tres_per_node="gres:gpu:1")
    j12, j13 = a.parse_json(json.dumps({"jobs": [new, old, "junk", {"job_id": "x"}]}), T0)
    assert (j12.id, j12.phase, j12.held, j12.duration_s, j12.deadline_s) == ("slurm-12", "pending", True, 5400.0,
                                                                             T0 + 86400)
    assert j12.deferrable and j12.kw == pytest.approx(2 * 0.5 + 8 * 0.01)
    assert not j13.deferrable and j13.why == "qos 'normal' not in slurm.deferrable_qos"
    assert j13.duration_s == cfg["default_duration_min"] * 60 and j13.deadline_s is None   # "None" limit, 0 deadline
    assert j13.kw == pytest.approx(0.5 + 4 * 0.01)                        # CPUs from the TRES when cpus is 0
    assert gpus_of("cpu=1,gres/gpu=3") == 3 and gpus_of("") == 0
    with pytest.raises(AdapterError, match="no 'jobs' array"):
        a.parse_json("{}", T0)


def test_a_comment_with_a_newline_cannot_forge_a_deferrable_queue_line(monkeypatch):
    """squeue's text output prints a user's comment as is: a newline in it makes a line for another job id
    (one in a deferrable partition); that job must never be deferred on the strength of it."""
    monkeypatch.setattr("shutil.which", lambda cmd: f"/usr/bin/{cmd}")
    monkeypatch.setattr("os.access", lambda p, m: True)
    a = SlurmAdapter(defaults("slurm", deferrable_by="partition", deferrable_partitions=["flex"]), run=None)
    US = "\x1f"

    def line(job, partition, comment):
        return US.join([job, "PENDING", partition, "normal", "60", "N/A", "N/A", "N/A", "N/A", "Priority", "",
                        "N/A", "1", "1", "train", comment]) + US      # squeue -O ends each field with it
    forged = line("999", "flex", "x")
    text = "\n".join([line("999", "batch", ""), line("1000", "batch", "hi\n" + forged)])
    jobs = {j.native_id: j for j in a.parse_text(text, T0)}
    assert not jobs["999"].deferrable and "twice" in jobs["999"].why
    honest = {j.native_id: j for j in a.parse_text(line("7", "flex", "ok"), T0)}
    assert honest["7"].deferrable


def test_a_hold_the_bridge_could_forget_is_never_placed(tmp_path):
    """The hold book is written before scontrol runs: with no state file, an unwritable one or an
    unreadable one, the defer is refused and Slurm is never called (a restarted bridge could not release
    such a hold: its guards would never see it)."""
    log = ActionLog(str(tmp_path / "actions.jsonl"), stream=open("/dev/null", "w"), clock=lambda: T0)
    bridge = defaults("bridge", site="s", gateway="g", mqtt="mqtt://127.0.0.1", release_when_silent_s=900.0)
    sched = defaults("slurm", deferrable_by="partition", deferrable_partitions=["flex"], guard_s=60.0,
                     min_hold_s=900.0, max_hold_h=12.0)
    (tmp_path / "afile").write_text("")              # a directory that cannot be made: the save fails, even as root
    (tmp_path / "bad.json").write_text("{not json")
    for book in (HoldBook(""), HoldBook(str(tmp_path / "afile" / "holds.json")), HoldBook(str(tmp_path / "bad.json"))):
        adapter = StandIn()
        out = DeferApplier(adapter, log, book, bridge, sched, started_s=T0).request(req(1), {"slurm-1": job(1)}, T0 + 1)
        assert out["action"] == "refuse" and "never placed" in out["reason"], (book.path, out)
        assert adapter.calls == [] and book.held == {}
    assert (tmp_path / "bad.json").read_text() == "{not json"      # the unreadable book is left for a human


def test_squeue_output_is_read_bounded_not_whole():
    """A queue of 100k jobs is hundreds of MB of JSON: the bridge stops reading past slurm.max_output_bytes
    and says so, instead of holding it all."""
    import os
    import time
    from controller.bridge.adapter import AdapterError
    a = SlurmAdapter.__new__(SlurmAdapter)
    a.cfg, a.env = {"max_output_bytes": 1000, "command_timeout_s": 20.0}, dict(os.environ)
    a._run = a._bounded_run
    t0 = time.monotonic()
    with pytest.raises(AdapterError, match="output over 1000 bytes"):
        a._cmd(["/bin/sh", "-c", "yes x | head -c 1000000000"])
    assert time.monotonic() - t0 < 10                   # stopped, not read to the end or to the timeout
    assert a._cmd(["/bin/echo", "hello"]).strip() == "hello"


def test_a_prometheus_that_trickles_its_answer_is_cut_at_the_timeout():
    """The socket timeout bounds each read: a server sending one byte every 0.3 s never trips it, and held
    the bridge (its defer guards included) for as long as it liked."""
    import socket
    import threading
    import time
    from controller.bridge.prom import PromClient, PromError
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    stop = threading.Event()

    def trickle():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        while not stop.is_set():
            try:
                conn.sendall(b" ")
            except OSError:
                break
            time.sleep(0.3)
        conn.close()
    th = threading.Thread(target=trickle, daemon=True)
    th.start()
    try:
        client = PromClient(f"http://127.0.0.1:{srv.getsockname()[1]}", timeout_s=1.5)
        t0 = time.monotonic()
        with pytest.raises(PromError, match="timeout_s"):
            client.query("up")
        assert time.monotonic() - t0 < 5
    finally:
        stop.set()
        srv.close()
