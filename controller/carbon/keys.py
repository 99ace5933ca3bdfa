"""The gateway's Ed25519 signing key: generate once, load, export the public key for auditors.

The private key is a PKCS#8 PEM file readable by its owner only (0600), created atomically (O_EXCL:
two processes starting together never end up with different keys). The public key goes out as a
SubjectPublicKeyInfo PEM (`ledger.pub`); its fingerprint (SHA-256 of the 32 raw bytes) is written into
the ledger's genesis record. On a production gateway the key belongs in a secure element / TPM; this
file-based key is the portable fallback.
"""
from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def generate_key(path: str | Path) -> Ed25519PrivateKey:
    """Create a new key at `path` (fails if the file exists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_or_create_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        return load_private_key(path)
    except FileNotFoundError:
        try:
            return generate_key(path)
        except FileExistsError:            # lost a race with another process: use its key
            return load_private_key(path)


def raw_public(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_public_key(key: Ed25519PrivateKey, path: str | Path) -> None:
    Path(path).write_bytes(public_pem(key))


def fingerprint(pub: Ed25519PublicKey) -> str:
    return "sha256:" + hashlib.sha256(raw_public(pub)).hexdigest()


def public_b64(pub: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(pub)).decode()


def public_from_b64(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text))


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A PEM public key file, or a file holding the raw key as base64 (44 chars) or hex (64 chars)."""
    data = Path(path).read_bytes().strip()
    if data.startswith(b"-----BEGIN"):
        pub = serialization.load_pem_public_key(data)
        if not isinstance(pub, Ed25519PublicKey):
            raise ValueError(f"{path}: not an Ed25519 public key")
        return pub
    try:
        text = data.decode("ascii")
        raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ValueError(f"{path}: not an Ed25519 public key (expected a PEM file, or the raw 32-byte key as "
                         "base64 or hex)") from None
