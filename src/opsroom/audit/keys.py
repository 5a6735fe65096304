"""The checkpoint signing key: an Ed25519 key file with 0600 permissions, made on first use.

Whoever can read the key can sign checkpoints, so a key file that its group or the world can
read is refused rather than used (the same rule as ssh). Auditors verify with the public key
printed by `opsroom audit public-key`, kept where the server's operators cannot change it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opsroom.errors import OpsroomError

KEY_NAME = "audit-signing.key"


class KeyRefused(OpsroomError):
    code = "audit_key_refused"


def key_path(data: Path, configured: Path | None) -> Path:
    return configured if configured is not None else data / KEY_NAME


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """The signing key at `path`, generated there (0600, never overwritten) if there is none."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:  # O_EXCL: two processes starting at once keep the first key, not a mix of both
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create(path)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        return key
    return load(path)


def load(path: Path) -> Ed25519PrivateKey:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyRefused(f"audit signing key {path} is readable by its group or others "
                         f"(mode {stat.S_IMODE(mode):04o}): refused",
                         hint=f"chmod 600 {path}, and make a new key if others may have read it")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyRefused(f"audit signing key {path} is not an Ed25519 key")
    return key


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def read_public(path: Path) -> Ed25519PublicKey:
    """A public key as `opsroom audit public-key` prints it (PEM), or its raw 32 bytes in base64."""
    raw = path.read_bytes()
    try:
        key = (serialization.load_pem_public_key(raw) if b"BEGIN" in raw
               else Ed25519PublicKey.from_public_bytes(base64.b64decode(raw.strip(), validate=True)))
    except ValueError as exc:
        raise KeyRefused(f"{path} holds no Ed25519 public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyRefused(f"{path} holds no Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    """A short name for the key, written in each checkpoint (which key to ask for)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
