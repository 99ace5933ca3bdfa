"""Defer / resume requests that carry out the MPC's placement of deferrable jobs (issue 17).

The MPC (controller/core/mpc_strategy.py, controller/core/mpc/deferrable.py) places every waiting
deferrable job of the image's djob slots inside its window, on the hours its objective prefers (PV that
would be curtailed, cheap or clean grid), and keeps the planned start per slot in the step's state
(`plan_job<k>_s`). This policy turns the plan into requests to the compute platform: a waiting job whose
planned start is later than the next decision (`margin_s`: the hook decides once a period) is held; a held
job whose planned start has come is resumed. A running job is never asked anything (it is fixed load: a job
is not suspended once it runs), nor is a job that is not deferrable. Each request carries the job's latest
start as `resume_by`, so the platform's own guard starts it in time whatever happens to the cabinet.

Pure: reads the book (which job a slot is), the image and the state; the hook publishes and marks.
"""
from __future__ import annotations

from controller.core.layout import S_PLAN_COUNT, S_PLAN_JOB0_S
from controller.points import DJ_DEADLINE_S, DJ_KW, DJ_STATE, DJOB0, DJOB_WAITING, N_DJOB, N_DJOB_FIELDS, Q_OK


def planning(state) -> bool:
    """The MPC is planning (it has made a plan): its placement, not the headroom policy, decides."""
    return state is not None and len(state) > S_PLAN_JOB0_S and state[S_PLAN_COUNT] > 0.0


def slot_job(book, value, b: int):
    """The book's deferrable job a waiting slot describes (same kW and deadline; the lowest id on a tie)."""
    kw, deadline = float(value[b + DJ_KW]), float(value[b + DJ_DEADLINE_S])
    for jid in sorted(book.jobs):
        j = book.jobs[jid]
        if (j.deferrable and j.state not in ("done", "cancelled") and abs(j.kw - kw) <= 1e-6
                and abs(j.latest_end_s - deadline) <= 1e-3):
            return j
    return None


def planned_requests(book, value, quality, state, t_s: float, margin_s: float = 60.0) -> list[dict]:
    """Requests (as headroom.defer_decisions': job, action, reason, resume_by_s) that make the platform
    follow the plan in `state`. `margin_s`: a start due before the next decision counts as due now."""
    out = []
    for k in range(N_DJOB):
        b = DJOB0 + k * N_DJOB_FIELDS
        if any(quality[b + f] != Q_OK for f in range(N_DJOB_FIELDS)) or value[b + DJ_STATE] != DJOB_WAITING:
            continue
        planned = float(state[S_PLAN_JOB0_S + k])
        if planned <= 0.0:
            continue
        j = slot_job(book, value, b)
        if j is None:
            continue
        held = j.id in book.deferred
        rem = book.deferred[j.id] if held else j.duration_s
        resume_by = j.latest_end_s - rem
        if planned > t_s + margin_s and not held:
            out.append({"job": j.id, "action": "defer", "resume_by_s": resume_by,
                        "reason": f"planned start in {(planned - t_s) / 3600.0:.2f} h"})
        elif planned <= t_s + margin_s and held:
            out.append({"job": j.id, "action": "resume", "resume_by_s": resume_by, "reason": "planned start"})
    return out
