"""Seal small secrets for the store: AES-256-GCM under a key file in the data dir.

Secret runbook parameters are kept sealed in `executions.secret_params` so that the
store, its backups and anyone who reads rows see ciphertext only; the server unseals
them into a step's context and nowhere else.

The key is `<data dir>/secret.key`: 32 random bytes, mode 0600, created atomically on
first use. A cluster of servers on one PostgreSQL shares this file the way it shares
the store (the same deployment secret on every node); a real secrets store (issue 16)
replaces the file later without changing the sealed format's callers.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import threading
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opsroom.errors import OpsroomError

KEY_FILE = "secret.key"
KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = "v1"
# Binds a blob to its purpose: a sealed parameter set cannot be replayed as another kind of secret.
_AAD = b"opsroom:executions.secret_params:v1"

_keys: dict[Path, bytes] = {}
_lock = threading.Lock()


class SealError(OpsroomError):
    code = "sealing"


def key_path(data: Path) -> Path:
    return data / KEY_FILE


def data_key(data: Path) -> bytes:
    """The data dir's sealing key, created on first use (atomic: two servers never race to two keys)."""
    path = key_path(data).resolve()
    with _lock:
        found = _keys.get(path)
        if found is None:
            found = _keys[path] = _load_or_create(path)
        return found


def _load_or_create(path: Path) -> bytes:
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() never replaces: whoever links first wins, everyone then reads the same key.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> bytes:
    info = path.stat()
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SealError(f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o})",
                        hint=f"chmod 600 {path}")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise SealError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key",
                        hint="restore it from the backup of this data dir; without it sealed values are lost")
    return key


def seal(key: bytes, values: dict[str, Any]) -> str:
    """JSON-encode `values` and encrypt them: 'v1:' + base64(nonce + ciphertext and tag)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    body = AESGCM(key).encrypt(nonce, json.dumps(values, sort_keys=True).encode(), _AAD)
    return f"{VERSION}:{base64.b64encode(nonce + body).decode()}"


def unseal(key: bytes, blob: str) -> dict[str, Any]:
    version, _, text = blob.partition(":")
    if version != VERSION:
        raise SealError(f"sealed value of unknown format {version[:8]!r}")
    try:
        raw = base64.b64decode(text, validate=True)
        plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _AAD)
    except (ValueError, InvalidTag):
        raise SealError("a sealed value cannot be opened with this data dir's key",
                        hint="was secret.key replaced or the row edited? the run needs to be asked for again") from None
    values: dict[str, Any] = json.loads(plain)
    return values
