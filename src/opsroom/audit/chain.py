"""The hash chain: each record's hash covers its content and the previous hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64


def record_hash(*, seq: int, at: float, actor: str, door: str, action: str, target: str, outcome: str,
                details: dict[str, Any], correlation_id: str | None, prev_hash: str) -> str:
    # Times are hashed at microsecond precision so a float round-trip through a
    # database column cannot change the hash.
    body = json.dumps(
        [seq, f"{at:.6f}", actor, door, action, target, outcome, details, correlation_id, prev_hash],
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()
