"""The Slurm adapter: the queue from ``squeue``, the verbs through ``scontrol`` (docs/bridge.md).

Deferrable jobs are chosen by ONE rule (``[slurm] deferrable_by``):
- ``partition`` (the primary, recommended): the job is in one of ``deferrable_partitions``. A partition
  is the site's decision, made in slurm.conf by the admin; the user opts in visibly (``sbatch -p flex``),
  the partition can carry its own limits (MaxTime, who may submit), and it needs no accounting database.
- ``qos``: the job's QOS is in ``deferrable_qos`` (QOS exist only with slurmdbd accounting).
- ``comment``: the job's comment contains ``comment_tag`` (free text the user sets and can change:
  the weakest contract, for a site that has nothing else).

Verbs: a pending job is held (``scontrol hold``: priority 0, reason JobHeldAdmin) and released
(``scontrol release``); a running one is suspended (``scontrol suspend``: SIGSTOP, the node's CPUs stay
allocated, the time limit stops counting) and resumed (``scontrol resume``) - only with
``suspend_running = true``, since a suspended job keeps its memory and GPUs.

Reading the queue: ``squeue --json`` (Slurm >= 21.08 with the serializer/json plugin; Debian 12's
22.05 has it), which lists pending, running, suspended and recently ended jobs (for MinJobAge). Fields
are read typed: a plain integer (22.05) or the ``{"set", "infinite", "number"}`` form of 23.02+, a state
as a string or a list. Without JSON (``squeue = "text"``, or ``auto`` when ``--json`` is refused):
``squeue -O`` with a unit-separator between fields, times in UTC (TZ=UTC for the command). ``auto``
settles on text when ``--json`` fails and the text form works.

kW estimate per job (``[slurm.kw.PARTITION]``, else ``[slurm.kw.default]``): base_kw + per_node_kw x
nodes + per_cpu_kw x CPUs + per_gpu_kw x GPUs (from ``gres/gpu`` in the job's TRES).
"""
from __future__ import annotations

import calendar
import json
import os
import re
import selectors
import shutil
import subprocess
import time

from controller.bridge.adapter import AdapterError
from controller.bridge.jobs import SchedJob

NO_VAL = (0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFD)
PENDING_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"}
SUSPENDED_STATES = {"SUSPENDED"}
HELD_REASONS = {"JobHeldAdmin", "JobHeldUser"}
US = "\x1f"
TEXT_FIELDS = ("JobID", "State", "Partition", "QOS", "TimeLimit", "EligibleTime", "StartTime", "EndTime",
               "Deadline", "Reason", "NodeList", "tres-per-node", "NumCPUs", "NumNodes", "Name", "Comment")
_GPU = re.compile(r"gres/gpu(?::[^=,]+)?[=:](\d+)")


def _num(v) -> float | None:
    """A Slurm number: int/float, {"set", "infinite", "number"} (23.02+), or "None"/"" -> None."""
    if isinstance(v, dict):
        if not v.get("set", True) or v.get("infinite", False):
            return None
        v = v.get("number")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if v in NO_VAL or v < 0:
        return None
    return float(v)


def _str(v) -> str:
    if isinstance(v, list):                    # 23.02+: job_state ["PENDING"], flags lists
        return str(v[0]) if v else ""
    return v if isinstance(v, str) else ""


def gpus_of(*tres: str) -> int:
    """GPUs in a TRES string ("cpu=1,mem=1M,node=1,gres/gpu=2" or "gres:gpu:2" / "gres/gpu:a100=2")."""
    best = 0
    for t in tres:
        t = (t or "").replace("gres:gpu", "gres/gpu")
        for m in _GPU.finditer(t):
            best = max(best, int(m.group(1)))
    return best


def tres_count(tres: str, name: str) -> float | None:
    """`name`=N in a TRES string ("cpu=2,mem=1M,node=1,billing=2"), None when absent."""
    m = re.search(rf"(?:^|,){re.escape(name)}=(\d+)", tres or "")
    return float(m.group(1)) if m else None


def _text_time(v: str) -> float | None:
    """squeue -O time (run with TZ=UTC): 2026-12-02T00:42:07, N/A, NONE, Unknown -> epoch or None."""
    if not v or not v[0].isdigit():
        return None
    try:
        return float(calendar.timegm(time.strptime(v, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def _text_minutes(v: str) -> float | None:
    """squeue TimeLimit: [days-]hours:minutes:seconds | minutes:seconds | UNLIMITED | NOT_SET."""
    v = v.strip()
    if not v or not v[0].isdigit():
        return None
    days = 0
    if "-" in v:
        d, v = v.split("-", 1)
        days = int(d)
    parts = [int(p) for p in v.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts[-3:]
    return days * 1440.0 + h * 60.0 + m + s / 60.0


class SlurmAdapter:
    name = "slurm"

    def __init__(self, cfg: dict, run=None):
        self.cfg = cfg
        self.can_suspend = bool(cfg["suspend_running"])
        self.prefix = cfg["job_id_prefix"]
        self._run = run or self._bounded_run
        self.mode = cfg["squeue"]                   # auto -> json or text on the first read
        self.env = dict(os.environ, TZ="UTC")
        if cfg["conf"]:
            self.env["SLURM_CONF"] = cfg["conf"]
        self.bin = {}
        for cmd in ("squeue", "scontrol"):
            path = os.path.join(cfg["bin_dir"], cmd) if cfg["bin_dir"] else shutil.which(cmd)
            if not path or not os.access(path, os.X_OK):
                where = cfg["bin_dir"] or "PATH"
                raise AdapterError(f"slurm.bin_dir: {cmd} not found in {where} (Debian: apt install slurm-client)")
            self.bin[cmd] = path

    # -- commands ------------------------------------------------------------------------------------
    def _bounded_run(self, args: list[str], capture_output: bool, env: dict, timeout: float):
        """subprocess.run with stdout read at most to slurm.max_output_bytes + 1 (a queue of 100k jobs is
        hundreds of MB of JSON: never held whole) and stderr to 64 KiB; the command is killed past either."""
        limit = self.cfg["max_output_bytes"] + 1
        with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ, (out, limit))
                sel.register(proc.stderr, selectors.EVENT_READ, (err, 65536))
                over = False
                while sel.get_map() and not over:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        proc.kill()
                        raise subprocess.TimeoutExpired(args, timeout)
                    for key, _ in sel.select(left):
                        buf, cap = key.data
                        chunk = os.read(key.fd, 65536)
                        if not chunk:
                            sel.unregister(key.fileobj)
                            continue
                        buf += chunk[:max(0, cap - len(buf))]
                        if len(buf) >= cap:     # over the bound: what is read is enough to say so
                            over = True
                            break
            if over:
                proc.kill()
                return subprocess.CompletedProcess(args, -9, bytes(out), bytes(err))
            code = proc.wait(max(0.1, deadline - time.monotonic()))
        return subprocess.CompletedProcess(args, code, bytes(out), bytes(err))

    def _cmd(self, args: list[str]) -> str:
        try:
            p = self._run(args, capture_output=True, env=self.env, timeout=self.cfg["command_timeout_s"])
        except subprocess.TimeoutExpired:
            raise AdapterError(f"{os.path.basename(args[0])} {' '.join(args[1:3])}: no answer in "
                               f"{self.cfg['command_timeout_s']:g} s (slurm.command_timeout_s)") from None
        except OSError as exc:
            raise AdapterError(f"{args[0]}: {exc}") from None
        out, err = p.stdout or b"", (p.stderr or b"").decode(errors="replace").strip()
        if len(out) > self.cfg["max_output_bytes"]:
            raise AdapterError(f"{os.path.basename(args[0])}: output over {self.cfg['max_output_bytes']} bytes "
                               "(slurm.max_output_bytes)")
        if p.returncode != 0:
            raise AdapterError(f"{os.path.basename(args[0])} {' '.join(args[1:])}: exit {p.returncode}: "
                               f"{err[-300:] or 'no message'}")
        return out.decode(errors="replace")

    def _scontrol(self, verb: str, job: SchedJob) -> str:
        out = self._cmd([self.bin["scontrol"], verb, job.native_id])
        return out.strip() or "ok"

    def hold(self, job: SchedJob) -> str:
        return self._scontrol("hold", job)

    def release(self, job: SchedJob) -> str:
        return self._scontrol("release", job)

    def suspend(self, job: SchedJob) -> str:
        return self._scontrol("suspend", job)

    def resume(self, job: SchedJob) -> str:
        return self._scontrol("resume", job)

    # -- the queue -----------------------------------------------------------------------------------
    def jobs(self, now_s: float) -> list[SchedJob]:
        if self.mode in ("auto", "json"):
            try:
                doc = self._cmd([self.bin["squeue"], "--json"])
            except AdapterError as exc:
                if self.mode == "json":
                    raise
                try:                                # auto: an old Slurm, or no serializer/json plugin
                    jobs = self._text(now_s)
                except AdapterError:
                    raise exc from None             # both fail: slurmctld is down, say the first
                self.mode = "text"
                return jobs
            self.mode = "json"
            return self.parse_json(doc, now_s)
        return self._text(now_s)

    def _text(self, now_s: float) -> list[SchedJob]:
        fmt = ",".join(f"{f}:{US}" for f in TEXT_FIELDS)
        return self.parse_text(self._cmd([self.bin["squeue"], "-h", "-t", "all", "-O", fmt]), now_s)

    def parse_json(self, text: str, now_s: float) -> list[SchedJob]:
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise AdapterError(f"squeue --json: not JSON ({type(exc).__name__})") from None
        jobs = doc.get("jobs") if isinstance(doc, dict) else None
        if not isinstance(jobs, list):
            raise AdapterError("squeue --json: no 'jobs' array")
        out = []
        for raw in jobs:
            if not isinstance(raw, dict):
                continue
            jid = _num(raw.get("job_id"))
            if jid is None:
                continue
            limit = _num(raw.get("time_limit"))
            j = self._job(
                native=str(int(jid)), state=_str(raw.get("job_state")), partition=_str(raw.get("partition")),
                qos=_str(raw.get("qos")), comment=_str(raw.get("comment")), name=_str(raw.get("name")),
                limit_min=limit, eligible=_num(raw.get("eligible_time")), start=_num(raw.get("start_time")),
                end=_num(raw.get("end_time")), deadline=_num(raw.get("deadline")),
                submit=_num(raw.get("submit_time")), reason=_str(raw.get("state_reason")),
                nodes=_str(raw.get("nodes")), node_count=_num(raw.get("node_count")),
                cpus=_num(raw.get("cpus")) or tres_count(_str(raw.get("tres_req_str")), "cpu"),
                gpus=gpus_of(_str(raw.get("tres_per_node")),
                                                         _str(raw.get("tres_per_job")),
                                                         _str(raw.get("tres_req_str"))),
                suspend_time=_num(raw.get("suspend_time")), pre_sus=_num(raw.get("pre_sus_time")),
                now_s=now_s)
            out.append(j)
        return out

    def parse_text(self, text: str, now_s: float) -> list[SchedJob]:
        out = []
        for line in text.splitlines():
            f = line.split(US)
            if f and f[-1] == "":
                f = f[:-1]
            if len(f) < len(TEXT_FIELDS):
                continue                            # a wrapped or foreign line
            if len(f) > len(TEXT_FIELDS):           # a separator inside the comment: it is the last field
                f = f[:len(TEXT_FIELDS) - 1] + [US.join(f[len(TEXT_FIELDS) - 1:])]
            v = dict(zip(TEXT_FIELDS, (x.strip() for x in f)))
            if not v["JobID"].isdigit():
                continue                            # array/het job syntax (123_4, 5+0): not handled here
            null = lambda s: "" if s in ("(null)", "N/A") else s   # noqa: E731
            nn = v["NumNodes"]
            out.append(self._job(
                native=v["JobID"], state=v["State"].split()[0] if v["State"] else "", partition=null(v["Partition"]),
                qos=null(v["QOS"]), comment=null(v["Comment"]), name=v["Name"], limit_min=_text_minutes(v["TimeLimit"]),
                eligible=_text_time(v["EligibleTime"]), start=_text_time(v["StartTime"]),
                end=_text_time(v["EndTime"]), deadline=_text_time(v["Deadline"]), submit=None,
                reason=v["Reason"], nodes=null(v["NodeList"]), node_count=float(nn) if nn.isdigit() else None,
                cpus=float(v["NumCPUs"]) if v["NumCPUs"].isdigit() else None, gpus=gpus_of(v["tres-per-node"]),
                suspend_time=None, pre_sus=None, now_s=now_s))
        # A job's comment is the user's text: a newline in it can forge a whole line for another job id
        # (one in a deferrable partition). A job id that appears twice is trusted for neither line.
        seen: dict[str, int] = {}
        for j in out:
            seen[j.native_id] = seen.get(j.native_id, 0) + 1
        for j in out:
            if seen[j.native_id] > 1:
                j.deferrable, j.why = False, "listed twice by squeue (a comment with a newline?): never deferred"
        return out

    # -- one job -------------------------------------------------------------------------------------
    def deferrable(self, partition: str, qos: str, comment: str) -> tuple[bool, str]:
        c = self.cfg
        by = c["deferrable_by"]
        if by == "partition":
            ok = partition in c["deferrable_partitions"]
            return ok, f"partition {partition!r} {'in' if ok else 'not in'} slurm.deferrable_partitions"
        if by == "qos":
            ok = qos in c["deferrable_qos"]
            return ok, f"qos {qos!r} {'in' if ok else 'not in'} slurm.deferrable_qos"
        ok = c["comment_tag"] in comment
        return ok, f"comment {'has' if ok else 'lacks'} {c['comment_tag']!r}"

    def estimate_kw(self, partition: str, node_count: float | None, cpus: float | None, gpus: int) -> float:
        table = self.cfg["kw"]
        k = table.get(partition) or table.get("default")
        if not k:
            return 0.0
        return (k["base_kw"] + k["per_node_kw"] * (node_count or 1.0) + k["per_cpu_kw"] * (cpus or 0.0)
                + k["per_gpu_kw"] * gpus)

    def _job(self, *, native, state, partition, qos, comment, name, limit_min, eligible, start, end, deadline,
             submit, reason, nodes, node_count, cpus, gpus, suspend_time, pre_sus, now_s) -> SchedJob:
        c = self.cfg
        if state in PENDING_STATES:
            phase = "pending"
        elif state in RUNNING_STATES:
            phase = "running"
        elif state in SUSPENDED_STATES:
            phase = "suspended"
        else:
            phase = "ended"                         # COMPLETED, CANCELLED, FAILED, TIMEOUT, DEADLINE...
        if limit_min is None or limit_min <= 0 or limit_min > 10080:
            limit_min = c["default_duration_min"]   # UNLIMITED or a year: Slurm's DefaultTime is better
        dur = limit_min * 60.0
        ok, why = self.deferrable(partition, qos, comment)
        if phase == "pending":
            t0 = eligible or submit or now_s
            if start and reason == "BeginTime":
                t0 = max(t0, start)
            remaining = dur
        elif phase == "running":
            t0 = start or now_s
            if suspend_time and pre_sus is not None and suspend_time > t0:
                t0 = suspend_time - pre_sus          # resumed after a suspension: its equivalent start
            remaining = max(0.0, t0 + dur - now_s)
        elif phase == "suspended":
            t0 = start or now_s
            remaining = max(0.0, dur - (pre_sus or 0.0)) if pre_sus is not None else dur
        else:
            t0 = start or eligible or submit or now_s
            remaining = 0.0
        if not deadline and c["default_deadline_h"] > 0 and ok and phase == "pending":
            deadline = (eligible or submit or now_s) + dur + c["default_deadline_h"] * 3600.0
        return SchedJob(
            id=self.prefix + native, native_id=native, phase=phase, state=state,
            kw=self.estimate_kw(partition, node_count, cpus, gpus), start_s=float(t0), duration_s=dur,
            remaining_s=remaining, deadline_s=deadline or None, deferrable=ok, why=why,
            held=phase == "pending" and reason in HELD_REASONS, reason=reason, label=name,
            node=nodes if phase != "pending" else "", end_s=end if phase == "ended" else None,
            ran=phase == "ended" and bool(nodes))      # allocated nodes: it started (a cancelled pending job
                                                        # has start = end and no nodes)
