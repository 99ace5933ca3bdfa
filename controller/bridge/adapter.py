"""The scheduler adapter: what the bridge needs from a compute platform's scheduler.

The bridge's policy (defer.py: which request to honour, the deadline guard, the log) is the same for
every scheduler; an adapter only reads the queue and carries out four verbs. Slurm implements it
(slurm.py, tested against a real slurmctld + slurmd). Kubernetes is on paper only, because there is no
API server on the machine this was built and tested on, and an adapter that was never run against one
is not shipped:

    Kubernetes (batch/v1 Job), the interface it would implement
    - jobs(): list Jobs with the label ``edge-ems.io/deferrable`` (primary marker, set by the site's
      admission policy, like a Slurm partition); kW from the annotation ``edge-ems.io/kw`` or the
      pod template's GPU / CPU requests times the configured kW per unit; start: ``status.startTime``
      or creation time; duration: ``spec.activeDeadlineSeconds``; deadline: annotation
      ``edge-ems.io/deadline`` (RFC 3339); phase: suspended when ``spec.suspend`` is true, running
      while ``status.active`` > 0, ended on a ``Complete`` / ``Failed`` condition, else pending.
    - hold() (a Job not started yet) and suspend() (a running Job): PATCH ``spec.suspend: true``
      (``application/merge-patch+json``). Kubernetes deletes a suspended Job's pods, so a running Job
      loses its progress unless it checkpoints: the same ``suspend_running`` switch gates it.
    - release() / resume(): PATCH ``spec.suspend: false``; the Job controller recreates the pods and
      ``activeDeadlineSeconds`` restarts from then.
    - Credentials: a ServiceAccount allowed only get/list/watch/patch on ``jobs`` in the namespaces
      it serves.
"""
from __future__ import annotations

from typing import Protocol

from controller.bridge.jobs import SchedJob


class AdapterError(Exception):
    """A scheduler command that failed; the message is what the scheduler said."""


class Adapter(Protocol):
    name: str
    can_suspend: bool                     # the site allows pausing running deferrable jobs

    def jobs(self, now_s: float) -> list[SchedJob]:
        """The queue now: pending, running, suspended and recently ended jobs. Raises AdapterError."""

    def hold(self, job: SchedJob) -> str:
        """Keep a pending job from starting; returns the scheduler's answer. Raises AdapterError."""

    def release(self, job: SchedJob) -> str:
        """Undo hold()."""

    def suspend(self, job: SchedJob) -> str:
        """Pause a running job (only called when can_suspend)."""

    def resume(self, job: SchedJob) -> str:
        """Undo suspend()."""
