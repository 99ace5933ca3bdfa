"""The bridge against a real one-node Slurm (slurmctld + slurmd + munged, tests/slurm_env.py) and a real
Mosquitto: the queue becomes compute/job announcements the gateway accepts; a compute/defer request
holds a pending deferrable job (scontrol hold, visible in squeue) or suspends a running one, a resume
releases it and it runs; a non-deferrable job is never touched; the guards release a held job without
any resume (slow: the same rules run against a stand-in adapter in test_bridge_policy.py); every action
is in the JSONL action log with its reason.

One Slurm, broker and `edge-ems bridge` process per module (deferrable = partition `flex`,
suspend_running = true, the queue read every second).
"""
from __future__ import annotations

import time

import pytest

from bridge_env import BridgeProcess, Cabinet, GATEWAY, SITE, actions, network_inputs
from slurm_env import NODE, SlurmCluster
from uplink_broker import Broker, wait_for

from controller.bridge.config import SCHEMA
from controller.bridge.slurm import SlurmAdapter
from controller.compute.jobs import JobBook
from controller.schema import Validator
from drivers.isotime import utc_epoch


def bridge_config(tmp, broker, slurm) -> str:
    path = tmp / "bridge.toml"
    path.write_text(f"""[bridge]
site = "{SITE}"
gateway = "{GATEWAY}"
mqtt = "{broker.url}"
queue_period_s = 1
announce_every_s = 300
action_log = "{tmp / 'actions.jsonl'}"
state_file = "{tmp / 'holds.json'}"
release_when_silent_s = 0

[slurm]
deferrable_by = "partition"
deferrable_partitions = ["flex"]
suspend_running = true
conf = "{slurm.conf}"
guard_s = 0
min_hold_s = 1
headroom_margin = 0.1

[slurm.kw.default]
per_node_kw = 0.1
per_cpu_kw = 0.01

[slurm.kw.flex]
per_node_kw = 0.2
per_cpu_kw = 0.05
per_gpu_kw = 0.4
""")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bridge-slurm")
    slurm, broker = SlurmCluster(tmp / "slurm"), Broker(tmp / "broker")
    cab = bridge = None
    try:                                        # whatever fails to start, what did start is stopped
        slurm.start()
        broker.start()
        cab = Cabinet(broker.port)
        bridge = BridgeProcess(bridge_config(tmp, broker, slurm))
        bridge.wait_line("mqtt: connected")
        yield tmp, slurm, broker, cab, bridge
    finally:
        code = bridge.stop() if bridge is not None else 0
        if cab is not None:
            cab.close()
        broker.kill()
        slurm.stop()
        assert code == 0, bridge.stderr()


@pytest.fixture(autouse=True)
def clean_queue(env):
    yield
    _, slurm, _, _, _ = env
    slurm.cancel_all()
    wait_for(lambda: not any((j["job_state"][0] if isinstance(j["job_state"], list) else j["job_state"])
                             in ("PENDING", "RUNNING", "SUSPENDED", "COMPLETING") for j in slurm.jobs()),
             90, "the queue to drain", poll=0.2)


def log_of(tmp, job: str) -> list[dict]:
    return [a for a in actions(tmp / "actions.jsonl") if a["job"] == job]


def wait_action(tmp, job: str, action: str, timeout: float = 15.0, **want) -> dict:
    def found():
        return next((a for a in log_of(tmp, job) if a["action"] == action
                     and all(a.get(k) == v for k, v in want.items())), None)
    return wait_for(found, timeout, f"action {action} {want} on {job} (log: {log_of(tmp, job)})")


def fill_node(slurm) -> str:
    """A non-deferrable job on all 4 CPUs: the next jobs stay pending (Resources)."""
    jid = slurm.sbatch("-p", "batch", "-c", "4", "-t", "5", "-J", "filler", "--wrap", "sleep 300")
    slurm.wait_state(jid, "RUNNING")
    return jid


def test_the_queue_becomes_announcements_the_gateway_accepts(env):
    tmp, slurm, _, cab, _ = env
    flex = slurm.sbatch("-p", "flex", "-c", "2", "-t", "5", "--begin=now+3600", "--deadline=now+7200",
                        "-J", "3D model rebuild, east pit", "--wrap", "sleep 60")
    batch = slurm.sbatch("-p", "batch", "-t", "3", "-J", "inference", "--wrap", "sleep 300")
    slurm.wait_state(batch, "RUNNING")
    raw = slurm.job(flex)
    a = cab.wait_job(f"slurm-{flex}", state="announced")
    assert a["deferrable"] is True and a["duration_min"] == 5 and a["label"] == "3D model rebuild, east pit"
    assert utc_epoch(a["start"]) == raw["eligible_time"]            # earliest start: its --begin
    assert utc_epoch(a["deadline"]) == raw["deadline"]              # Slurm's own --deadline
    assert a["kw"] == pytest.approx(0.2 + 0.05 * 2)                 # [slurm.kw.flex]: node + 2 CPUs
    b = cab.wait_job(f"slurm-{batch}", state="running")
    assert b["deferrable"] is False and b["node"] == NODE and "deadline" not in b
    assert b["kw"] == pytest.approx(0.1 + 0.01)                     # [slurm.kw.default]
    assert utc_epoch(b["start"]) == slurm.job(batch)["start_time"]
    book = JobBook()
    inputs = network_inputs([book])
    for payload in cab.messages("compute/job"):
        assert inputs.feed("compute/job", payload), inputs.stats()["compute/job"]["last_error"]
    assert book.jobs[f"slurm-{flex}"].deferrable and book.jobs[f"slurm-{flex}"].deadline_s == raw["deadline"]
    assert not book.jobs[f"slurm-{batch}"].deferrable
    slurm.run("scancel", flex, batch)
    cab.wait_job(f"slurm-{flex}", state="cancelled")                # never ran
    done = cab.wait_job(f"slurm-{batch}", state="done")             # ran until cancelled: trimmed to that
    assert done["duration_min"] < 3
    for payload in cab.messages("compute/job"):
        assert inputs.feed("compute/job", payload)
    assert book.jobs[f"slurm-{flex}"].state == "cancelled" and book.jobs[f"slurm-{batch}"].state == "done"


def test_defer_holds_a_pending_job_and_resume_releases_it_and_it_runs(env):
    tmp, slurm, _, cab, _ = env
    filler = fill_node(slurm)
    flex = slurm.sbatch("-p", "flex", "-t", "2", "--deadline=now+3600", "--wrap", "sleep 1")
    job = f"slurm-{flex}"
    cab.wait_job(job, state="announced")
    cab.defer(job, "defer", "site short 12.0 kW", resume_by_s=time.time() + 1800)
    hold = wait_action(tmp, job, "hold")
    assert hold["ok"] and hold["reason"] == "site short 12.0 kW" and hold["source"] == "cabinet"
    assert slurm.state(flex) == ("PENDING", "JobHeldAdmin")         # scontrol hold, as squeue shows it
    slurm.run("scancel", filler)                                    # the node is free ...
    wait_for(lambda: slurm.run("sinfo", "-h", "-n", NODE, "-o", "%t").stdout.strip() == "idle", 15, "node idle")
    assert slurm.state(flex) == ("PENDING", "JobHeldAdmin")         # ... and the held job still waits
    cab.defer(job, "resume", "green headroom 25.0 kW over 1.0 h")
    rel = wait_action(tmp, job, "release")
    assert rel["ok"] and rel["reason"].startswith("resume: green headroom") and rel["held_s"] > 0
    slurm.wait_state(flex, "RUNNING", "COMPLETED")
    assert slurm.wait_state(flex, "COMPLETED")[0] == "COMPLETED"
    cab.wait_job(job, state="done")


def test_a_non_deferrable_job_is_never_held_or_suspended(env):
    tmp, slurm, _, cab, _ = env
    filler = fill_node(slurm)                                       # running, partition batch
    waiting = slurm.sbatch("-p", "batch", "-t", "2", "--wrap", "sleep 1")   # pending, partition batch
    cab.wait_job(f"slurm-{waiting}", state="announced")
    for jid in (filler, waiting):
        cab.defer(f"slurm-{jid}", "defer", "site short 50.0 kW")
        r = wait_action(tmp, f"slurm-{jid}", "refuse")
        assert "not deferrable (partition 'batch' not in slurm.deferrable_partitions)" in r["reason"], r
    assert slurm.state(filler)[0] == "RUNNING"
    assert slurm.state(waiting)[1] != "JobHeldAdmin"
    assert [a["action"] for a in log_of(tmp, f"slurm-{filler}") + log_of(tmp, f"slurm-{waiting}")] == \
        ["refuse", "refuse"]
    slurm.run("scancel", filler)
    slurm.wait_state(waiting, "RUNNING", "COMPLETED")               # it runs as soon as it can


def test_a_running_deferrable_job_is_suspended_and_resumed(env):
    tmp, slurm, _, cab, _ = env
    flex = slurm.sbatch("-p", "flex", "-t", "5", "--deadline=now+3600", "--wrap", "sleep 300")
    job = f"slurm-{flex}"
    slurm.wait_state(flex, "RUNNING")
    cab.wait_job(job, state="running")
    cab.defer(job, "defer", "site short 3.0 kW")
    assert wait_action(tmp, job, "suspend")["ok"]
    slurm.wait_state(flex, "SUSPENDED")
    cab.defer(job, "resume", "deadline")
    assert wait_action(tmp, job, "resume")["ok"]
    slurm.wait_state(flex, "RUNNING")


@pytest.mark.slow
def test_the_guard_releases_a_held_job_at_its_latest_start_without_a_resume(env):
    tmp, slurm, _, cab, _ = env
    filler = fill_node(slurm)
    flex = slurm.sbatch("-p", "flex", "-t", "2", "--deadline=now+3600", "--wrap", "sleep 1")
    job = f"slurm-{flex}"
    cab.wait_job(job, state="announced")
    cab.defer(job, "defer", "site short 8.0 kW", resume_by_s=time.time() + 2.0)
    wait_action(tmp, job, "hold")
    slurm.run("scancel", filler)
    rel = wait_action(tmp, job, "release", source="guard")          # no resume was sent
    assert rel["ok"] and rel["reason"].startswith("latest start")
    assert_finishes_before_its_deadline(slurm, flex)


def assert_finishes_before_its_deadline(slurm, jid: str) -> None:
    assert slurm.wait_state(jid, "COMPLETED")[0] == "COMPLETED"
    j = slurm.job(jid)
    assert 0 < j["end_time"] <= j["deadline"], j


@pytest.mark.slow
def test_green_headroom_releases_a_held_job_when_the_resume_is_lost(env):
    tmp, slurm, _, cab, _ = env
    filler = fill_node(slurm)
    flex = slurm.sbatch("-p", "flex", "-t", "90", "--deadline=now+36000", "--wrap", "sleep 1")   # 0.25 kW, 1.5 h
    job = f"slurm-{flex}"
    cab.wait_job(job, state="announced")
    cab.headroom(now_kw=0.0, short_kw=4.0)                          # short: no release on headroom
    cab.defer(job, "defer", "site short 4.0 kW")
    wait_action(tmp, job, "hold")
    cab.headroom(now_kw=0.2, short_kw=0.0, hourly_kw=[0.2, 0.2])    # green, but not for its 0.25 kW x 1.1
    cab.headroom(now_kw=5.0, short_kw=0.0, hourly_kw=[5.0, 0.21])   # green in hour 1, not enough in hour 2
    cab.headroom(now_kw=5.0, short_kw=0.0, hourly_kw=[5.0, 4.0])    # green over its 1.5 h
    slurm.run("scancel", filler)
    rel = wait_action(tmp, job, "release", source="headroom")
    assert rel["reason"] == "green headroom 4.0 kW over 1.5 h >= 0.25 kW x 1.1"   # the smallest hour it runs in
    assert_finishes_before_its_deadline(slurm, flex)


def test_squeue_json_and_text_read_the_same_queue(env):
    """The fallback for a Slurm without --json (squeue -O, unit-separated) against the same real queue."""
    tmp, slurm, _, _, _ = env
    slurm.sbatch("-p", "flex", "-c", "2", "-t", "7", "--begin=now+3600", "--deadline=now+7200",
                 "--comment=a|b, c", "-J", "name with | bar", "--wrap", "sleep 1")
    running = slurm.sbatch("-p", "batch", "-t", "1-00:00:00", "--wrap", "sleep 300")
    slurm.wait_state(running, "RUNNING")
    v = Validator("t", "")
    cfg = v.walk(SCHEMA.fields["slurm"], {"deferrable_by": "comment", "comment_tag": "b, c",
                                         "conf": str(slurm.conf), "kw": {"default": {"per_cpu_kw": 0.5}}}, "slurm")
    assert not v.problems, v.problems
    now = time.time()
    by_json = {j.id: j for j in SlurmAdapter(dict(cfg, squeue="json")).jobs(now)}
    text = SlurmAdapter(dict(cfg, squeue="text"))
    by_text = {j.id: j for j in text.jobs(now)}
    assert text.mode == "text" and set(by_json) == set(by_text) and len(by_json) >= 2
    for jid, a in by_json.items():
        b = by_text[jid]
        for f in ("phase", "state", "kw", "start_s", "duration_s", "deadline_s", "deferrable", "held", "label",
                  "node", "ran"):
            assert getattr(a, f) == getattr(b, f), (jid, f, getattr(a, f), getattr(b, f))
    flex = next(j for j in by_json.values() if j.label == "name with | bar")
    assert flex.deferrable and flex.why == "comment has 'b, c'" and flex.kw == 1.0 and flex.duration_s == 420
    assert by_json[f"slurm-{running}"].duration_s == 1440 * 60
