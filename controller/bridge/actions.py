"""What the bridge did to the scheduler and why: the JSONL action log, and the book of the jobs it holds.

Every decision on a request or a guard - carried out, refused or skipped - is one JSON line in
``[bridge] action_log`` and one line on stderr, so a site engineer can answer "why did job 42 wait an
hour" from the file alone::

    {"t":"2026-12-02T10:00:03Z","job":"slurm-42","native":"42","action":"hold","ok":true,
     "source":"cabinet","reason":"site short 12.0 kW","request_t":"2026-12-02T10:00:02Z",
     "resume_by":"2026-12-02T16:00:00Z","detail":"ok"}

``action``: hold | release | suspend | resume (carried out when ``ok``) or refuse | skip (nothing done,
``reason`` says why). ``source``: cabinet (a compute/defer request), headroom (the retained headroom
said green), guard (the deadline / max-hold guard), silent (no headroom from the cabinet for too long),
outside (someone else released or resumed it). The file is rotated to ``.1`` at 16 MiB.

`HoldBook`: the jobs the bridge itself holds or suspended, with why and until when; the bridge only
ever releases those (a hold an admin placed is never lifted by the bridge). Kept in ``[bridge]
state_file`` when set (atomic replace), so a restarted bridge still knows which holds are its own.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from drivers.isotime import utc_iso

ROTATE_BYTES = 16 * 1024 * 1024


class ActionLog:
    def __init__(self, path: str, stream=sys.stderr, clock=time.time):
        self.path = Path(path) if path else None
        self.stream, self.clock = stream, clock
        self.records: list[dict] = []            # the last 1000, for tests and the status line
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, action: str, job: str, reason: str, *, ok: bool = True, source: str = "cabinet",
              native: str = "", **extra) -> dict:
        rec = {"t": utc_iso(self.clock()), "job": job, "native": native, "action": action, "ok": ok,
               "source": source, "reason": reason}
        rec.update({k: v for k, v in extra.items() if v is not None})
        line = json.dumps(rec, sort_keys=False, separators=(",", ":"))
        if self.path is not None:
            try:
                if self.path.exists() and self.path.stat().st_size > ROTATE_BYTES:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError as exc:                # a full disk must not stop the bridge: stderr still has it
                print(f"edge-ems bridge: action log {self.path}: {exc}", file=self.stream, flush=True)
        word = action if ok else f"{action} FAILED"
        print(f"edge-ems bridge: {word} {job} ({source}: {reason})", file=self.stream, flush=True)
        self.records.append(rec)
        del self.records[:-1000]
        return rec


class HoldBook:
    """job id -> {"native", "action" (hold|suspend), "t_s", "reason", "resume_by_s"}."""

    def __init__(self, path: str = ""):
        self.path = Path(path) if path else None
        self.held: dict[str, dict] = {}
        self.problem = "" if self.path is not None else "no bridge.state_file configured"
        self._unreadable = False
        if self.path is not None and self.path.exists():
            try:
                if self.path.stat().st_size > 4 << 20:
                    raise ValueError("larger than 4 MiB")
                doc = json.loads(self.path.read_text())
                held = doc.get("held", {}) if isinstance(doc, dict) else {}
                self.held = {k: v for k, v in held.items() if isinstance(v, dict)
                             and v.get("action") in ("hold", "suspend") and isinstance(v.get("native"), str)
                             and v["native"].isdigit() and isinstance(v.get("t_s"), (int, float))}
            except (OSError, ValueError, RecursionError) as exc:
                # its holds are unknown: releasing nothing is safe only if nothing new is held on top
                self._unreadable = True
                self.problem = f"unreadable ({str(exc)[:120]}); no new holds until it is mended or removed"
                print(f"edge-ems bridge: state file {self.path}: {self.problem}", file=sys.stderr, flush=True)

    def add(self, job_id: str, native: str, action: str, t_s: float, reason: str, resume_by_s: float | None) -> bool:
        """Remember a hold before it is placed; False (nothing remembered) when that is not durable."""
        if self.path is None or self._unreadable:
            return False
        self.held[job_id] = {"native": native, "action": action, "t_s": t_s, "reason": reason,
                             "resume_by_s": resume_by_s}
        if not self._save():
            del self.held[job_id]
            return False
        return True

    def drop(self, job_id: str) -> None:
        if self.held.pop(job_id, None) is not None:
            self._save()

    def _save(self) -> bool:
        if self.path is None or self._unreadable:
            return False
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"v": 1, "held": self.held}, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            self.problem = str(exc)[:200]
            print(f"edge-ems bridge: state file {self.path}: {exc}", file=sys.stderr, flush=True)
            return False
        self.problem = ""
        return True
