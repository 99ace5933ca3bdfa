"""The gateway's data directory (`--data-dir`, default /var/lib/edge-ems): what survives a restart.

    root/keys/gateway.key       the gateway's Ed25519 key, made once (0600 in a 0700 dir); `selftest` checks keys/
    root/ledger/carbon.ledger   the one carbon ledger of this gateway, appended across restarts, never recreated
    root/ledger/carbon.ledger.pub   its public key (re-derivable from the key; written when missing or different)
    root/ledger/carbon.ledger.open  the interval in progress, checkpointed (controller/carbon/hook.py)
    root/recording/             rotating replay segments (controller/segments.py), bounded in bytes and days
    root/spool/                 the uplink's store-and-forward spool (controller/uplink/spool.py)
    root/state.json             the small state file (controller/runtime/statefile.py)

The paths are fixed here, in one place, so that `run`, `selftest`, `ledger verify` and install.sh agree on
them. `ledger/` is a directory (install.sh makes it) so that a torn ledger's kept-aside copy and the
checkpoint sit next to the ledger, not loose in the root.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

DEFAULT_ROOT = "/var/lib/edge-ems"


class DataDirError(Exception):
    """The data directory cannot be used (its message names the path and what failed)."""


class DataDir:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or os.environ.get("EDGE_EMS_DATA_DIR") or DEFAULT_ROOT)
        self.keys_dir = self.root / "keys"
        self.gateway_key = self.keys_dir / "gateway.key"
        self.ledger_dir = self.root / "ledger"
        self.ledger = self.ledger_dir / "carbon.ledger"
        self.ledger_pub = self.ledger_dir / "carbon.ledger.pub"
        self.ledger_checkpoint = self.ledger_dir / "carbon.ledger.open"
        self.recording_dir = self.root / "recording"
        self.spool_dir = self.root / "spool"
        self.state_file = self.root / "state.json"

    def ensure(self) -> "DataDir":
        """Create what is missing (0700: keys, ledger and the recording are the site's business only).
        Existing directories keep their mode (install.sh may have chosen 0750 for the service group)."""
        for d in (self.root, self.keys_dir, self.ledger_dir, self.recording_dir, self.spool_dir):
            try:
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
            except FileExistsError:
                raise DataDirError(f"{d}: exists and is not a directory") from None
            except OSError as exc:
                raise DataDirError(f"{d}: cannot create the data directory ({exc.strerror or exc})") from None
            if not d.is_dir():
                raise DataDirError(f"{d}: exists and is not a directory")
            if not os.access(d, os.W_OK | os.X_OK):
                raise DataDirError(f"{d}: not writable by uid {os.getuid()}")
        try:
            os.chmod(self.keys_dir, 0o700)       # the key's directory is never group-readable
        except OSError as exc:
            raise DataDirError(f"{self.keys_dir}: cannot set mode 0700 ({exc.strerror or exc})") from None
        return self

    def free_bytes(self) -> int:
        """Free bytes for this user on the data directory's file system (0 when it cannot be asked)."""
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return 0

    def __repr__(self) -> str:
        return f"DataDir({str(self.root)!r})"
