"""The technician's export: the last hours of the recording as CSV (the in-memory ring for what the
recording does not hold yet), the signed ledger whole with its key, and the audit log."""
from __future__ import annotations

import csv
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

from controller.core import layout as L
from controller.ipc.common import _iso
from controller.points import CATALOGUE


class Exports:
    """Mixed into :class:`controller.ipc.server.IpcServer`."""

    def export(self, hours: float) -> list[Path]:
        """The last `hours` of the recording (a file, or a gateway's directory of segments; without one, the
        10-s in-memory ring) as CSV, plus the audit log as JSONL, into the export directory."""
        self.export_dir.mkdir(parents=True, exist_ok=True)
        pub = self._pub
        t_end = pub[2] if pub else time.time()
        t_from = t_end - hours * 3600.0
        stamp = datetime.fromtimestamp(t_end, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        gw = self.cfg["site"]["gateway_id"]
        csv_path = self.export_dir / f"{gw}-{stamp}-{hours:g}h.csv"
        header = ["t_utc", "t_s", *[p.name for p in CATALOGUE], *[f"q_{p.name}" for p in CATALOGUE],
                  *[f"cmd_{c}" for c in L.COMMAND_NAMES]]
        rows = 0
        last_t = -math.inf
        npts = len(CATALOGUE)
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            if self.recording_path is not None and self.recording_path.exists():
                from controller.replay import RecordingError, iter_records
                for path in self._recording_files(t_from):
                    try:
                        for r in iter_records(path):
                            t = float(r.image["t_s"])
                            last_t = t
                            if t < t_from:
                                continue
                            w.writerow([_iso(t), f"{t:.3f}", *(f"{x:.6g}" for x in r.image["value"]),
                                        *(int(q) for q in r.image["quality"]), *(f"{x:.6g}" for x in r.commands)])
                            rows += 1
                    except (OSError, RecordingError):
                        if path == self.recording_path:
                            raise                   # the one file of `run --out`: say why the export failed
                        # a segment rotated away or still without its header: the others are still worth having
            ring = self._ring
            if ring is not None:                 # the in-memory rows the recording does not hold yet
                size = len(ring)
                end = self._ring_n
                for i in range(max(0, end - size), end):
                    row = ring[i % size].copy()
                    if not (row[0] >= t_from and row[0] > last_t):
                        continue
                    w.writerow([_iso(row[0]), f"{row[0]:.3f}", *(f"{x:.6g}" for x in row[1:1 + npts]),
                                *(int(q) for q in row[1 + npts:1 + 2 * npts]),
                                *(f"{x:.6g}" for x in row[1 + 2 * npts:])])
                    rows += 1
        files = [csv_path]
        ledger = self._ledger_path()
        if ledger is not None and ledger.exists():
            # the signed carbon ledger whole (a hash chain verifies only from its genesis), with its key
            import shutil
            for src in (ledger, ledger.with_name(ledger.name + ".pub")):
                if src.exists():
                    dst = self.export_dir / f"{gw}-{stamp}-{src.name}"
                    shutil.copyfile(src, dst)
                    files.append(dst)
        audit_path = csv_path.with_suffix(".audit.jsonl")
        with open(audit_path, "w") as f:
            for rec in list(self.audit):
                f.write(json.dumps(rec) + "\n")
            for s, t, c, v in (pub[10] if pub else []):
                if t >= t_from:
                    f.write(json.dumps({"event_seq": s, "t_s": t, "code": c, "event": L.EVENT_NAMES.get(c, str(c)),
                                        "value": v}) + "\n")
        return [*files, audit_path]

    def _recording_files(self, t_from: float) -> list[Path]:
        """The recording file, or for a segment directory (a gateway's DATA_DIR/recording) the segments that can
        hold rows at or after t_from, oldest first: reading only those keeps a short export short on a disk
        holding weeks of segments. A segment ends where the next one starts (names carry the start, to 1 s)."""
        path = self.recording_path
        if not path.is_dir():
            return [path]
        from controller.segments import list_segments, segment_start_s
        segs = list_segments(path)
        keep = []
        for i, seg in enumerate(segs):
            nxt = segment_start_s(segs[i + 1]) if i + 1 < len(segs) else None
            if nxt is not None and nxt + 1.0 <= t_from:
                continue
            keep.append(seg)
        return keep

    def _ledger_path(self) -> Path | None:
        for hook in list(getattr(self.loop, "hooks", [])):
            path = getattr(getattr(hook, "writer", None), "path", None)
            if path is not None:
                return Path(path)
        return None
