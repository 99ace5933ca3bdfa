"""`edge-ems run`'s socket: where it goes, where exports and the audit log go, and a bind failure
reported without stopping the controller."""
from __future__ import annotations

from pathlib import Path

from controller.ipc.paths import default_socket_path
from controller.ipc.server import IpcServer, start_ipc


def start_ipc_for_run(cfg: dict, args, account=None) -> IpcServer | None:
    """`edge-ems run`: the socket from --socket (or the default), exports and the audit log next to --out.
    A socket that cannot be bound is reported and the controller runs without it. ``account``: the
    runtime's controller/carbon/account.py EnergyAccount (carbon.today), else the server keeps its own."""
    import sys
    spec = getattr(args, "socket", None)
    if spec == "none":
        return None
    path = Path(spec) if spec else default_socket_path()
    out = Path(args.out) if getattr(args, "out", None) else None
    try:
        server = start_ipc(cfg, path, export_dir=(out / "exports") if out else None,
                           audit_path=(out / "audit.jsonl") if out else None,
                           recording_path=(out / "recording") if out else None, account=account)
    except OSError as exc:
        print(f"edge-ems run: no TUI socket ({exc}); the controller runs without it", file=sys.stderr)
        return None
    print(f"edge-ems run: TUI socket {path}", flush=True)
    return server
