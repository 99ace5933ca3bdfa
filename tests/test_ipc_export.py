"""The technician's export (controller/ipc/export.py) from a gateway's recording: `edge-ems run --data-dir D`
records into D/recording as rotating segments, and the TUI's export must read them all, in order, across
rotations, and skip the ones older than the window instead of failing on a directory."""
import csv

import numpy as np

from controller.config import load_site
from controller.core import layout as L
from controller.ipc import IpcServer
from controller.params import build_params
from controller.points import INDEX, new_image
from controller.segments import SegmentRecorder, list_segments

SITE = load_site("inner-mongolia-mine")
T0 = 1767225600.0 + 3600.0                   # 2026-01-01T01:00:00Z


def _record(directory, n, t0=T0, dt=1.0, **kw):
    """n records with soc_pct = cycle number, so the CSV can be checked row by row."""
    params = build_params(SITE)
    state = L.new_state(t0 - 1.0)
    rec = SegmentRecorder(directory, params, state, {"site": "test"}, **kw)
    img = new_image()
    cmd = np.zeros(L.N_COMMANDS)
    events = np.zeros((L.MAX_EVENTS, 2))
    for i in range(n):
        img["t_s"] = t0 + i * dt
        img["cycle"] = i
        img["value"][:] = 0.0
        img["value"][INDEX["soc_pct"]] = float(i)
        img["quality"] = 0
        rec.append(img, cmd, events, 0, state)
    rec.close()


def _export(tmp_path, recording, hours, t_end):
    srv = IpcServer(SITE, tmp_path / "ipc.sock", export_dir=tmp_path / "exports", recording_path=recording)
    srv._pub = (1, 0, t_end, None, None, None, None, None, None, None, [], {}, None, 0.0, None)   # as the hook sets it
    files = srv.export(hours)
    with open(files[0], newline="") as f:
        rows = list(csv.DictReader(f))
    return files, [float(r["soc_pct"]) for r in rows]


def test_export_reads_every_segment_in_order_across_rotations(tmp_path):
    d = tmp_path / "recording"
    _record(d, 3000, max_segment_bytes=32768, max_total_bytes=1 << 30)
    assert len(list_segments(d)) >= 3                     # the export really crosses boundaries (a header is ~18 KB)
    files, soc = _export(tmp_path, d, hours=2.0, t_end=T0 + 2999)
    assert soc == [float(i) for i in range(3000)]
    assert files[-1].name.endswith(".audit.jsonl")


def test_export_window_skips_older_segments_and_keeps_the_boundary_rows(tmp_path):
    d = tmp_path / "recording"
    _record(d, 3000, max_segment_bytes=32768, max_total_bytes=1 << 30)
    _files, soc = _export(tmp_path, d, hours=600 / 3600, t_end=T0 + 2999)    # the last 10 minutes
    assert soc == [float(i) for i in range(2399, 3000)]


def test_export_survives_a_segment_without_a_header(tmp_path):
    """A segment just opened (or rotated away while the export reads) does not fail the export."""
    d = tmp_path / "recording"
    _record(d, 600, max_segment_bytes=32768, max_total_bytes=1 << 30)
    last = list_segments(d)[-1]
    (d / (last.name[:4] + "20991231T000000Z" + last.name[20:])).write_bytes(b"")   # sorts last, no header
    _files, soc = _export(tmp_path, d, hours=1.0, t_end=T0 + 599)
    assert soc == [float(i) for i in range(600)]
