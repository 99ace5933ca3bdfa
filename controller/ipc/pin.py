"""The technician PIN: salted scrypt (or PBKDF2) hashes for the profile's [tui] pin_hash, checked in
constant time. Kept apart from the server so `edge-ems tui --hash-pin` needs nothing else."""
from __future__ import annotations

import hashlib
import hmac
import secrets


def hash_pin(pin: str, *, kind: str = "scrypt", salt: bytes | None = None) -> str:
    """A salted hash for the site profile's [tui] pin_hash."""
    salt = salt or secrets.token_bytes(16)
    if kind == "scrypt":
        n, r, p = 2 ** 14, 8, 1
        h = hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
        return f"scrypt${n}${r}${p}${salt.hex()}${h.hex()}"
    if kind == "pbkdf2_sha256":
        it = 200_000
        h = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, it)
        return f"pbkdf2_sha256${it}${salt.hex()}${h.hex()}"
    raise ValueError(f"unknown PIN hash kind {kind!r}")


def check_pin(pin: str, stored: str) -> bool:
    parts = stored.split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, want = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
            got = hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, dklen=len(want), maxmem=64 * 2 ** 20)
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            salt, want = bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
            got = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, int(parts[1]), dklen=len(want))
        else:
            return False
    except (ValueError, OverflowError):
        return False
    return hmac.compare_digest(got, want)
