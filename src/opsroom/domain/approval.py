"""Approval lifecycle (DESIGN 5c), pure: who may vote and what a vote decides."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

DEFAULT_EXPIRY_S = 15 * 60


def binding_hash(*, runbook_hash: str, params: dict[str, Any], target: str) -> str:
    """An approval covers exactly this runbook version, these parameters, this target."""
    body = json.dumps([runbook_hash, params, target], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""


def may_vote(*, status: str, expired: bool, requester_id: int | None, requester: str, voter_id: int | None,
             voter: str, voter_roles: frozenset[str], roles: list[str]) -> Verdict:
    if status != "open":
        return Verdict(False, f"it is already {status}")
    if expired:
        return Verdict(False, "it has expired")
    # Compare stable ids where both exist; names as the fallback for non-user requesters.
    same = (requester_id is not None and requester_id == voter_id) or requester == voter
    if same:
        return Verdict(False, "nobody approves their own request")
    if not (set(roles) & voter_roles) and "admin" not in voter_roles:
        return Verdict(False, f"it needs role {' or '.join(roles)}")
    return Verdict(True)
