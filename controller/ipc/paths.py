"""Where the socket lives: the server's and the client's view of the same search order, so that
`edge-ems tui` finds a controller started by systemd, by a user session or from a shell."""
from __future__ import annotations

import os
from pathlib import Path


def default_socket_path() -> Path:
    """/run/edge-ems/ipc.sock (systemd RuntimeDirectory) when usable, else $XDG_RUNTIME_DIR/edge-ems,
    else /tmp/edge-ems-UID."""
    run = Path("/run/edge-ems")
    if run.is_dir() and os.access(run, os.W_OK) or os.access("/run", os.W_OK):
        return run / "ipc.sock"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.access(xdg, os.W_OK):
        return Path(xdg) / "edge-ems" / "ipc.sock"
    return Path(f"/tmp/edge-ems-{os.getuid()}") / "ipc.sock"


def client_socket_path() -> Path:
    """Where a client looks first: the same order, but only paths that exist."""
    for p in (Path("/run/edge-ems/ipc.sock"),
              Path(os.environ.get("XDG_RUNTIME_DIR", "/nonexistent")) / "edge-ems" / "ipc.sock",
              Path(f"/tmp/edge-ems-{os.getuid()}") / "ipc.sock"):
        if p.exists():
            return p
    return default_socket_path()
