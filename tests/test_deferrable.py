"""Deferrable jobs planned by the MPC (issue 17): the kernel against HiGHS's MILP and by hand, the instance
contract's job fields, the strategy's slots, the requests that carry the plan out, the platform's holds."""
from dataclasses import replace

import numpy as np
import pytest

from controller.core.mpc import deferrable as D
from controller.core.mpc_reference import (check_jobs, check_plan, plan_objective, solve_reference_jobs,
                                           with_jobs_as_load)
from controller.core.plan_instance import InstanceError, Job, instance_from_dict, instance_to_dict, result_to_json
from tools.bench.deferrable import make_job_instance
from tools.bench.mpc import make_instance_dict


def _graded(inst, plan, run):
    fixed = with_jobs_as_load(inst, run)
    assert check_jobs(inst, run) is None
    assert check_plan(fixed, plan) < 1e-6
    return plan_objective(fixed, **plan.__dict__)


@pytest.mark.parametrize("seed,kind,n_jobs", [
    (3, "convex", 2),
    pytest.param(2, "peak", 2, marks=pytest.mark.slow),      # HiGHS took > 600 s here at load 30 (threads)
    pytest.param(3, "convex", 3, marks=pytest.mark.slow),
])
def test_gap_to_highs_milp(seed, kind, n_jobs):
    """Small (24 steps) so HiGHS stays quick on a loaded machine; tools/bench/deferrable.py has 96 steps."""
    inst = make_job_instance(seed, 24, kind, n_jobs)
    ours = D.solve_jobs(inst)
    ref, ref_run = solve_reference_jobs(inst, time_limit_s=60.0)
    a, b = _graded(inst, ours, ours.job_run), _graded(inst, ref, ref_run)
    assert (a - b) / max(1.0, abs(b)) <= 0.01
    assert a == pytest.approx(ours.objective, rel=1e-6, abs=1e-6)


def _flat(H=24, pv_from=10, pv_to=14):
    d = make_instance_dict(0, H, "convex", dt_h=1.0)
    d.update(load_kw=[20.0] * H, pv_kw=[60.0 if pv_from <= t < pv_to else 0.0 for t in range(H)],
             grid_price=[0.5] * H, export_price=[0.0] * H, grid_co2_kg_per_kwh=[0.6] * H, export_max_kw=0.0,
             carbon_price_per_kg=0.0, peak_price_per_kw=0.0)
    d["battery"].update(capacity_kwh=1.0, soc0_pct=50.0, soc_min_pct=0.0, reserve_pct=0.0, charge_max_kw=0.0,
                        discharge_max_kw=0.0, terminal_value_per_kwh=0.0, wear_cost_per_kwh=0.0)
    d["diesel"] = None
    return d


def test_job_lands_on_the_pv_surplus_by_hand():
    """Load 20 kW, PV 60 kW in hours 10-13 only, no battery to speak of, flat price: a 30 kW job of 3 h with a
    window 0..24 must run inside 10-13 (40 kW would be curtailed there): grid 0 while it runs."""
    d = _flat()
    d["jobs"] = [{"kw": 30.0, "duration_steps": 3, "earliest_step": 0, "deadline_step": 24, "splittable": False}]
    inst = instance_from_dict(d)
    r = D.solve_jobs(inst)
    on = np.flatnonzero(r.job_run[0])
    assert 10 <= on[0] and on[-1] <= 13 and len(on) == 3
    assert r.grid_kw[on] == pytest.approx(0.0, abs=1e-9)
    # the same job, not allowed past hour 8: it cannot reach the surplus and runs where it may
    d["jobs"][0]["deadline_step"] = 8
    r2 = D.solve_jobs(instance_from_dict(d))
    assert np.flatnonzero(r2.job_run[0])[-1] < 8
    # splittable, 5 h, window 8..16: 4 h on the surplus, the fifth anywhere in the window
    d["jobs"] = [{"kw": 30.0, "duration_steps": 5, "earliest_step": 8, "deadline_step": 16, "splittable": True}]
    r3 = D.solve_jobs(instance_from_dict(d))
    on3 = set(np.flatnonzero(r3.job_run[0]))
    assert {10, 11, 12, 13} <= on3 and len(on3) == 5


def test_instance_job_fields_are_checked():
    d = _flat()
    ok = {"kw": 30.0, "duration_steps": 3, "earliest_step": 2, "deadline_step": 9, "splittable": False}
    inst = instance_from_dict({**d, "jobs": [ok]})
    assert inst.jobs == (Job(30.0, 3, 2, 9, False),)
    assert instance_to_dict(inst)["jobs"] == [ok]
    cases = [
        ({**ok, "deadline_step": 4}, "jobs[0].deadline_step: expected an integer in [5, 24]"),
        ({**ok, "duration_steps": 0}, "jobs[0].duration_steps: expected an integer in [1, 24]"),
        ({**ok, "earliest_step": 2.5}, "jobs[0].earliest_step: expected an integer"),
        ({**ok, "splittable": 1}, "jobs[0].splittable: expected true/false"),
        ({**ok, "kw": -1}, "jobs[0].kw: expected a value >= 0"),
        ({k: v for k, v in ok.items() if k != "kw"}, "jobs[0].kw: missing key"),
        ({**ok, "colour": "red"}, "jobs[0]: unknown key 'colour'"),
    ]
    for job, msg in cases:
        with pytest.raises(InstanceError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            instance_from_dict({**d, "jobs": [job]})
    with pytest.raises(InstanceError, match="jobs: expected at most 8 jobs"):
        instance_from_dict({**d, "jobs": [ok] * 9})
    with pytest.raises(InstanceError, match="jobs: expected an array"):
        instance_from_dict({**d, "jobs": {"kw": 1}})
    out = result_to_json(D.solve_jobs(inst))
    assert out["jobs"][0]["start_step"] is not None and len(out["jobs"][0]["run_steps"]) == 3


def test_clip_jobs_keeps_every_window_feasible():
    jobs = np.array([[5.0, 30.0, -3.0, 100.0, 0.0],      # longer than the horizon: the whole horizon
                     [5.0, 4.0, 20.0, 22.0, 0.0],        # its latest start has passed: as early as it may
                     [5.0, 2.0, 3.0, 9.0, 1.0]])
    c = D.clip_jobs(jobs, 24)
    assert c[:, D.J_DUR].tolist() == [24, 4, 2]
    assert c[:, D.J_EARLY].tolist() == [0, 20, 3]
    assert c[:, D.J_END].tolist() == [24, 24, 9]


# -- the controller side ---------------------------------------------------------------------------------
def _image_with_slot(state, kw=20.0, start=1000.0, dur=3 * 3600.0, deadline=30000.0):
    from controller.points import DJOB0, N_DJOB_FIELDS, N_POINTS, Q_OK
    value, quality = np.zeros(N_POINTS), np.full(N_POINTS, Q_OK, np.uint8)
    value[DJOB0:DJOB0 + N_DJOB_FIELDS] = (kw, start, dur, deadline, state)
    return value, quality


def test_strategy_slots_become_planner_rows_and_running_jobs_fixed_load():
    from controller.core.mpc_strategy import _djobs, _job
    value, quality = _image_with_slot(1.0)
    rows, slot = _djobs(value, quality, 0.0, 96, 900.0)
    assert rows.tolist() == [[20.0, 12.0, 2.0, 33.0, 0.0]] and slot.tolist() == [0]
    assert _job(value, quality)[3] == 0                  # waiting: not fixed load
    value, quality = _image_with_slot(2.0)
    kw, start, dur, n = _job(value, quality)
    assert n == 1 and (kw[0], start[0], dur[0]) == (20.0, 1000.0, 3 * 3600.0)
    assert _djobs(value, quality, 0.0, 96, 900.0)[0].shape[0] == 0


def test_planned_requests_hold_then_resume_never_a_running_job():
    from controller.compute.jobs import JobBook
    from controller.compute.planned import planned_requests
    from controller.core.layout import N_STATE, S_PLAN_COUNT, S_PLAN_JOB0_S
    book = JobBook([{"id": "j", "kw": 20.0, "start_s": 1000.0, "end_s": 1000.0 + 3 * 3600.0, "deferrable": True,
                     "deadline_s": 30000.0}, {"id": "fixed", "kw": 20.0, "start_s": 0.0, "end_s": 99.0}])
    state = np.zeros(N_STATE)
    state[S_PLAN_COUNT] = 1.0
    state[S_PLAN_JOB0_S] = 8200.0
    value, quality = _image_with_slot(1.0)
    reqs = planned_requests(book, value, quality, state, 900.0)
    assert [(r["job"], r["action"], r["resume_by_s"]) for r in reqs] == [("j", "defer", 30000.0 - 3 * 3600.0)]
    book.mark_deferred("j", 900.0)
    assert planned_requests(book, value, quality, state, 7000.0) == []          # held, not due yet
    reqs = planned_requests(book, value, quality, state, 8150.0)                # due within the margin
    assert [(r["job"], r["action"]) for r in reqs] == [("j", "resume")]
    value, quality = _image_with_slot(2.0)                                     # running: never asked
    assert planned_requests(book, value, quality, state, 9000.0) == []


def test_platform_holds_a_job_before_its_release_and_counts_moved_hours_from_release():
    from tests.test_compute_sim_platform import Run, job
    r = Run([job(release_s=3600.0, duration_s=3600.0, slack_s=7200.0)])
    r.to(600)                                     # announced at 0, released at 3600
    r.ask("a", "defer")
    r.to(3601)
    j = r.p.jobs["a"]
    assert j.held and not j.running and r.p.running_kw() == {}
    assert r.p.log[0]["action"] == "hold"
    r.to(5400)
    r.ask("a", "resume")
    r.to(5401)
    assert j.running
    r.to(9002)
    row = r.p.job_rows(r.t)[0]
    assert row["held_h"] == pytest.approx(0.5, abs=1e-3) and not row["missed"] and row["done_h"] is not None
