"""Compute telemetry in, green headroom and defer/resume out: payloads, the job book, the pure headroom
computation (hand-checked), the defer policy, and the payloads over a real Mosquitto broker."""
import json
import re
import threading

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.compute.headroom import Outlook, defer_decisions, green_headroom, shortfall_kwh, \
    window_headroom_kw
from controller.compute.jobs import JobBook
from controller.core.forecast import N_LOAD_STATE, load_forecast, load_new_state
from drivers import compute as C
from uplink_broker import Broker, wait_for

T0 = 1775808000.0     # 2026-04-10T08:00:00Z
BAT = {"battery": {"capacity_kwh": 100.0, "reserve_pct": 30.0, "soc_max_pct": 90.0, "charge_max_kw": 50.0,
                   "discharge_max_kw": 50.0, "eta_charge": 1.0, "eta_discharge": 1.0}}


def outlook(pv, load, soc=50.0, dt_h=1.0, **kw):
    cfg = {"battery": {**BAT["battery"], **kw}}
    return Outlook.from_site(cfg, pv, load, soc, dt_h)


# -- payloads -------------------------------------------------------------------------------------------
def test_power_payload_parses_and_sums_nodes():
    p = C.decode(C.POWER, b'{"v":1,"t":"2026-04-10T08:00:00Z","source":"kepler","nodes":{"gpu-01":9.5,"gpu-02":8.5},'
                          b'"jobs":{"job-17":12.0}}')
    assert p.t_s == T0 and p.total_kw == 18.0 and p.jobs == {"job-17": 12.0} and p.source == "kepler"


def test_job_payload_parses():
    j = C.decode(C.JOB, json.dumps({"id": "job-17", "kw": 20, "start": "2026-04-10T09:00:00Z", "duration_min": 180,
                                    "deferrable": True, "deadline": "2026-04-10T20:00:00Z", "label": "rebuild"}))
    assert (j.kw, j.start_s, j.duration_s, j.deferrable) == (20.0, T0 + 3600, 10800.0, True)
    assert j.latest_end_s == T0 + 12 * 3600


@pytest.mark.parametrize("kind, payload, words", [
    (C.POWER, b"{not json", "not JSON"),
    (C.POWER, b'{"t":"2026-04-10T08:00:00Z"}', "total_kw"),
    (C.POWER, b'{"t":"2026-04-10T08:00:00Z","total_kw":-3}', "'total_kw'"),
    (C.POWER, b'{"t":"2026-04-10T08:00:00Z","jobs":{"a":"12"},"total_kw":1}', "'jobs.a'"),
    (C.POWER, b'{"t":"2026-04-10 08:00","total_kw":1}', "no UTC offset"),
    (C.JOB, b'{"id":"a","kw":1,"start":"2026-04-10T08:00:00Z"}', "'duration_min' is required"),
    (C.JOB, b'{"id":"a","kw":1,"start":"2026-04-10T08:00:00Z","duration_min":60,"deferrable":"yes"}', "'deferrable'"),
    (C.JOB, b'{"id":"a","kw":1,"start":"2026-04-10T08:00:00Z","duration_min":60,'
            b'"deadline":"2026-04-10T08:30:00Z"}', "before start + duration"),
    (C.JOB, b'{"v":2,"id":"a"}', "'v'"),
    ("compute/other", b"{}", "not an inbound"),
])
def test_bad_payloads_name_the_key(kind, payload, words):
    with pytest.raises(C.ComputePayloadError, match=re.escape(words)) as exc:
        C.decode(kind, payload)
    assert str(exc.value).startswith(kind)


# -- job book ---------------------------------------------------------------------------------------------
def test_measured_job_power_overrides_the_announcement_while_fresh():
    book = JobBook([C.JobAnnouncement("j", 20.0, T0, 3600.0)], max_age_s=120.0)
    assert book.power_at(T0 + 10) == {"j": 20.0}
    book.measure_power(C.ITPower(T0 + 60, 70.0, jobs={"j": 23.5, "other": 4.0}))
    assert book.power_at(T0 + 100) == {"j": 23.5, "other": 4.0}
    assert book.power_at(T0 + 200) == {"j": 20.0}            # telemetry 140 s old: announcement again
    book.announce(C.JobAnnouncement("j", 20.0, T0, 1800.0, state="done"))
    assert book.power_at(T0 + 2000) == {}


def test_announced_jobs_feed_the_load_forecast_kernel():
    book = JobBook([C.JobAnnouncement("j", 20.0, T0 + 3600, 7200.0)])
    state = np.zeros(N_LOAD_STATE)
    load_new_state(state, 0.2, 3600.0, 50.0)          # a flat 50 kW baseline prior
    kw, start, dur, n = book.forecast_arrays(T0)
    out = np.zeros(4)
    load_forecast(T0, 4, 1.0, state, kw, start, dur, n, out)
    assert out.tolist() == pytest.approx([50.0, 70.0, 70.0, 50.0])
    book.mark_deferred("j", T0 + 3600)                # deferred before it ran: placed at its latest start
    kw, start, dur, n = book.forecast_arrays(T0 + 3600)
    assert n == 1 and start[0] == T0 + 3600 and dur[0] == 7200.0


def test_compute_device_points_stamps_and_bad_messages():
    clock = {"mono": 100.0}
    book = JobBook()
    dev = C.ComputeTelemetry("it", listeners=[book], utc=lambda: T0 + 60, mono=lambda: clock["mono"])
    got = []
    sink = lambda *a: got.append(a)                     # noqa: E731  (device, point, value, t_mono, quality)
    dev.acquire(105.0, sink)
    assert got[:3] == [("it", "job_kw", 0.0, 105.0, 0), ("it", "job_start_s", 0.0, 105.0, 0),
                       ("it", "job_end_s", 0.0, 105.0, 0)]  # no telemetry yet: no it_kw at all
    assert [g[1] for g in got[3:]] == list(C.DJOB_POINTS) and all(g[2] == 0.0 for g in got[3:])  # no deferrable job
    assert dev.feed(C.POWER, b'{"t":"2026-04-10T08:01:00Z","total_kw":61.5,"cooling_kw":5.5}')
    assert dev.feed(C.JOB, b'{"id":"b","kw":9,"start":"2026-04-10T10:00:00Z","duration_min":60}')
    assert dev.feed(C.JOB, b'{"id":"a","kw":7,"start":"2026-04-10T09:00:00Z","duration_min":60}')
    assert not dev.feed(C.JOB, b'{"id":"c","kw":"lots"}')
    assert dev.errors == 1 and "'start' is required" in dev.last_error
    got.clear()
    dev.acquire(130.0, sink)
    assert ("it", "it_kw", 61.5, 100.0, 0) in got and ("it", "cooling_kw", 5.5, 100.0, 0) in got
    assert ("it", "job_kw", 7.0, 130.0, 0) in got and ("it", "job_start_s", T0 + 3600, 130.0, 0) in got
    assert book.jobs.keys() == {"a", "b"} and book.last_power.total_kw == 61.5
    dev.feed(C.JOB, b'{"id":"a","kw":7,"start":"2026-04-10T09:00:00Z","duration_min":60,"state":"cancelled"}')
    got.clear()
    dev.acquire(131.0, sink)
    assert ("it", "job_kw", 9.0, 131.0, 0) in got and book.jobs["a"].state == "cancelled"


# -- headroom, hand-checked -----------------------------------------------------------------------------
def test_headroom_by_hand():
    """PV 100, 100, 0, 0 kW; loads 40 kW; battery 50 of 100 kWh, reserve 30, top 90, 50 kW, lossless.

    Baseline: h0 charges 40 (to 90, 20 curtailed), h1 full (60 curtailed), h2 draws 40 (to 50), h3 draws
    the 20 above the reserve and is 20 kWh short -> short_kwh_horizon 20, short now 0.
    Hour 0 alone: the battery must still be full after h1, which recharges at most 50: it may end h0 at
    40 kWh -> 60 PV + 10 from the battery -> 70 kW. Hour 1 alone: only the 60 kW curtailed (any draw is
    short later). 1 h window = hour 0 = 70; 2 h: x with 50 + (60 - x) + (60 - x) >= 90 -> 40. 4 h: 0
    (hours 2-3 are already short).
    """
    h = green_headroom(outlook([100, 100, 0, 0], [40, 40, 40, 40]), windows_h=(1, 2, 4))
    assert h["hourly_kw"] == pytest.approx([70.0, 60.0, 0.0, 0.0], abs=1e-6)
    assert h["windows_kw"] == pytest.approx({"1h": 70.0, "2h": 40.0, "4h": 0.0}, abs=1e-6)
    assert h["now_kw"] == pytest.approx(70.0, abs=1e-6)
    assert h["short_kw"] == 0.0 and h["short_kwh_horizon"] == 20.0


def test_short_now_and_it_share():
    # night: 0 PV, 60 kW loads, battery at its reserve: all 60 kW from grid/diesel
    o = outlook([0, 0], [60, 60], soc=30.0)
    assert green_headroom(o)["short_kw"] == 60.0
    # 15-minute steps, battery full (50 of a 50 % top), PV surplus 40 kW curtailed for the hour.
    # Now (first 15 min): the 40 kW surplus + 50 kW from the battery (12.5 kWh, refilled by the next
    # 45 min of surplus: 30 kWh) = 90 site kW; with it_share 0.8 (25 % cooling on top) 72 IT kW.
    # 1 h: 40 kW + the 20 kWh above the reserve (nothing after the horizon to keep it for) = 60 -> 48.
    o = Outlook.from_site({"battery": {**BAT["battery"], "soc_max_pct": 50.0}}, [100] * 4, [60] * 4, 50.0, 0.25,
                          it_share=0.8)
    h = green_headroom(o)
    assert h["now_kw"] == pytest.approx(72.0, abs=1e-6) and h["windows_kw"]["1h"] == pytest.approx(48.0, abs=1e-6)


def test_headroom_is_the_edge_of_added_grid_energy():
    """Property: adding the headroom adds no grid/diesel kWh; 1 % more does (where it is not capped)."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = 24
        pv = np.clip(rng.normal(60, 40, n), 0, None) * (np.arange(n) % 24 < 12)
        load = rng.uniform(20, 60, n)
        o = outlook(pv, load, soc=rng.uniform(30, 90), dt_h=1.0)
        base = shortfall_kwh(o, np.zeros((1, n)))[0]
        for w in (1.0, 4.0, 12.0):
            x = window_headroom_kw(o, w)
            mask = (np.arange(n) < w).astype(float)
            assert shortfall_kwh(o, mask * x)[0] <= base + 1e-5
            if x > 0.1:
                assert shortfall_kwh(o, mask * x * 1.01 + mask * 0.01)[0] > base + 1e-7


def test_bad_outlook_is_a_clear_error():
    with pytest.raises(ValueError, match="same length"):
        Outlook.from_site(BAT, [1, 2], [1], 50.0, 1.0)


# -- defer / resume -------------------------------------------------------------------------------------
def _book():
    return JobBook([
        C.JobAnnouncement("big", 30.0, T0, 4 * 3600.0, deferrable=True, deadline_s=T0 + 12 * 3600),
        C.JobAnnouncement("small", 10.0, T0, 4 * 3600.0, deferrable=True, deadline_s=T0 + 12 * 3600),
        C.JobAnnouncement("tight", 25.0, T0, 4 * 3600.0, deferrable=True, deadline_s=T0 + 4 * 3600 + 600),
        C.JobAnnouncement("fixed", 40.0, T0, 4 * 3600.0),
    ])


def test_site_short_defers_deferrable_jobs_largest_first():
    book = _book()
    short = outlook([0] * 4, [120] * 4, soc=30.0)          # 120 kW short now (battery at reserve)
    reqs = defer_decisions(book, short, T0 + 600)
    assert [(r["job"], r["action"]) for r in reqs] == [("big", "defer"), ("small", "defer")]
    assert reqs[0]["resume_by_s"] == T0 + 12 * 3600 - (4 * 3600 - 600)
    assert "short 120.0 kW" in reqs[0]["reason"]
    small = outlook([0] * 4, [25] * 4, soc=30.0)           # 25 kW short: the biggest job covers it
    assert [r["job"] for r in defer_decisions(book, small, T0 + 600)] == ["big"]
    green = outlook([200] * 4, [80] * 4, soc=60.0)
    assert defer_decisions(book, green, T0 + 600) == []


def test_deferred_job_resumes_on_green_headroom_or_deadline():
    book = _book()
    book.mark_deferred("big", T0 + 600)
    assert book.power_at(T0 + 700).keys() == {"small", "tight", "fixed"}
    green = outlook([200] * 6, [80] * 6, soc=60.0)
    assert defer_decisions(book, green, T0 + 900) == []      # held at least 15 min (no flapping)
    reqs = defer_decisions(book, green, T0 + 600 + 900)
    assert [(r["job"], r["action"]) for r in reqs] == [("big", "resume")] and "green headroom" in reqs[0]["reason"]
    short = outlook([0] * 6, [120] * 6, soc=30.0)
    resume_by = T0 + 12 * 3600 - (4 * 3600 - 600)
    assert all(r["action"] == "defer" for r in defer_decisions(book, short, resume_by - 60))
    reqs = defer_decisions(book, short, resume_by)
    assert reqs[0] == {"job": "big", "action": "resume", "reason": "deadline", "resume_by_s": resume_by}
    book.mark_resumed("big", resume_by)
    assert book.power_at(resume_by + 1)["big"] == 30.0 and book.jobs["big"].end_s == T0 + 12 * 3600


def test_a_deferred_job_the_platform_starts_itself_is_followed_and_counted():
    """The bridge releases a held job at its latest start without a resume from us: the running
    announcement is what the book follows (its power counted, no resume sent for it later)."""
    book = _book()
    book.mark_deferred("big", T0 + 600)
    started = T0 + 3 * 3600
    book.announce(C.JobAnnouncement("big", 30.0, started, 4 * 3600 - 600, True, T0 + 12 * 3600, state="running"))
    assert "big" not in book.deferred and book.power_at(started + 1)["big"] == 30.0
    green = outlook([200] * 6, [80] * 6, soc=60.0)
    assert [r for r in defer_decisions(book, green, started + 1800) if r["job"] == "big"] == []


# -- over a real broker ---------------------------------------------------------------------------------
def test_payloads_over_mosquitto_headroom_retained(tmp_path):
    """A compute bridge publishes power and a job; the gateway side decodes them into the book, publishes
    the retained headroom and a defer request; a scheduler connecting later still gets the headroom."""
    from controller.uplink.topics import Topics
    broker = Broker(tmp_path / "broker").start()
    clients = []
    try:
        topics = Topics("mine", "gw1")
        book, got, lock = JobBook(), [], threading.Lock()

        def client(cid, on_message=None, subscribe=None, on_subscribe=None):
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid)
            if on_subscribe:
                c.on_subscribe = on_subscribe
            if on_message:
                c.on_message = on_message
            if subscribe:
                c.on_connect = lambda cl, *_: cl.subscribe(subscribe, qos=1)
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
            clients.append(c)
            return c

        device = C.ComputeTelemetry(listeners=[book], utc=lambda: T0 + 620)

        def gateway_on_message(cl, userdata, msg):      # what the uplink does with the compute topics
            assert device.feed(msg.topic[len(topics.base) + 1:], msg.payload)
            with lock:
                got.append(msg.topic)

        subacks = []
        gw = client("gw1", gateway_on_message, [(C.topic(topics, k), 1) for k in C.INBOUND],
                    on_subscribe=lambda *a: subacks.append(a))
        wait_for(lambda: subacks, 5, "the gateway's SUBACK")
        bridge = client("bridge")
        wait_for(lambda: bridge.is_connected(), 5, "bridge connected")
        bridge.publish(C.topic(topics, C.JOB), json.dumps(
            {"v": 1, "id": "job-17", "kw": 30, "start": "2026-04-10T08:00:00Z", "duration_min": 240,
             "deferrable": True, "deadline": "2026-04-10T20:00:00Z"}), qos=1).wait_for_publish(5)
        bridge.publish(C.topic(topics, C.POWER), json.dumps(
            {"v": 1, "t": "2026-04-10T08:10:00Z", "total_kw": 75.0, "jobs": {"job-17": 28.0}}), qos=1)
        wait_for(lambda: len(got) == 2, 5, "both compute messages at the gateway")
        assert book.power_at(T0 + 620) == {"job-17": 28.0}
        points = {}
        device.acquire(0.0, lambda dev, point, value, t, q: points.__setitem__(point, value))
        # a deferrable job is not the announced (fixed) job: it fills the first slot the MPC places
        slots = {k: points.pop(k) for k in C.DJOB_POINTS}
        assert points == {"it_kw": 75.0, "job_kw": 0.0, "job_start_s": 0.0, "job_end_s": 0.0}
        assert (slots["djob0_kw"], slots["djob0_start_s"], slots["djob0_dur_s"], slots["djob0_deadline_s"],
                slots["djob0_state"]) == (30.0, T0, 4 * 3600.0, T0 + 12 * 3600.0, 1.0)
        o = outlook([0] * 4, [120] * 4, soc=30.0)
        h = green_headroom(o)
        gw.publish(C.topic(topics, C.HEADROOM), C.encode_headroom(h, T0 + 600, "synchronised"), qos=1,
                   retain=True).wait_for_publish(5)
        reqs = defer_decisions(book, o, T0 + 600)
        for r in reqs:
            gw.publish(C.topic(topics, C.DEFER), C.encode_defer(r, T0 + 600), qos=1).wait_for_publish(5)
        seen = {}
        client("scheduler", lambda cl, u, m: seen.setdefault(m.topic, (json.loads(m.payload), m.retain)),
               [(C.topic(topics, C.HEADROOM), 1)])
        wait_for(lambda: C.topic(topics, C.HEADROOM) in seen, 5, "retained headroom at a late subscriber")
        payload, retained = seen[C.topic(topics, C.HEADROOM)]
        assert retained and payload["short_kw"] == 120.0 and payload["now_kw"] == 0.0
        assert payload["t"] == "2026-04-10T08:10:00Z" and payload["valid_until"] == "2026-04-10T08:12:00Z"
        assert [r["job"] for r in reqs] == ["job-17"]
        assert json.loads(C.encode_defer(reqs[0], T0 + 600))["resume_by"] == "2026-04-10T16:10:00Z"
    finally:
        for c in clients:
            c.loop_stop()
            c.disconnect()
        broker.kill()
