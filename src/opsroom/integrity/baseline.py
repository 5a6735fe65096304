"""The signed baseline: canonical JSON of every entry, HMAC-SHA256 under a key derived from the
data dir's secret key (secrets/sealing.py), never a key of its own and never a default one.

HMAC and not Ed25519: the only party that verifies is the server that signs, with the same
secret, so a public key would add a second secret to keep without anyone to hand it to. What
it stops: a person who can write the database (a leaked DB password, a restored old backup
edited by hand) cannot make the files they changed look accepted, because the signature covers
the site, the generation and every entry. A baseline that fails is itself an alarm.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from opsroom.integrity.snapshot import Entry
from opsroom.secrets import sealing

_INFO = b"opsroom:integrity-baseline:v1"
VERSION = "v1"


def signing_key(data: Path) -> bytes:
    """HKDF of the data dir's key, bound to this one purpose: a baseline MAC can never be replayed
    as a sealed secret or the other way round."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(sealing.data_key(data))


def encode(entries: dict[str, Entry]) -> str:
    """Canonical JSON (sorted keys, no spaces, ASCII): the exact text that is signed and stored."""
    return json.dumps({p: entries[p].as_dict() for p in sorted(entries)}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)


def decode(text: str) -> dict[str, Entry]:
    raw: dict[str, dict[str, Any]] = json.loads(text)
    return {p: Entry.from_dict(v) for p, v in raw.items()}


def sign(key: bytes, *, site: str, generation: int, entries: str) -> str:
    body = json.dumps([VERSION, site, generation, hashlib.sha256(entries.encode()).hexdigest()],
                      separators=(",", ":")).encode()
    return f"{VERSION}:{hmac.new(key, body, hashlib.sha256).hexdigest()}"


def valid(key: bytes, *, site: str, generation: int, entries: str, signature: str) -> bool:
    return hmac.compare_digest(sign(key, site=site, generation=generation, entries=entries), signature)


@dataclass
class Baseline:
    site: str
    generation: int
    entries: dict[str, Entry]
    texts: dict[str, str]  # path -> text, for diffs (only trusted when its sha256 matches the entry)

    def text_of(self, path: str) -> str | None:
        text, entry = self.texts.get(path), self.entries.get(path)
        if text is None or entry is None or entry.sha256 is None:
            return None
        return text if hashlib.sha256(text.encode()).hexdigest() == entry.sha256 else None
