"""Approval lifecycle (DESIGN 5c), pure: who may vote and what a vote decides."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from typing import Any

DEFAULT_EXPIRY_S = 15 * 60
MAX_REASON = 500


def binding_hash(*, runbook_hash: str, params: dict[str, Any], target: str,
                 secret_params: str | None = None, environment: str | None = None) -> str:
    """An approval covers exactly this runbook version, these parameters, this target.

    `secret_params` is the sealed blob of the secret values (their masks are in `params`):
    swapping it would run other secrets under the same approval. `environment` reaches the
    steps as `{{ environment }}`. Each is left out when absent, so a binding computed
    without it keeps its hash.
    """
    parts: list[Any] = [runbook_hash, params, target]
    if secret_params is not None:
        parts.append(secret_params)
    if environment is not None:
        parts.append({"environment": environment})
    body = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def reason_problem(reason: str) -> str | None:
    """Why a decision's reason cannot be shown as written, or None.

    A reason is rendered inside a bot line in every room: a newline or another control
    character in it could forge what looks like a line of its own.
    """
    if len(reason) > MAX_REASON:
        return f"a reason is at most {MAX_REASON} characters (this one has {len(reason)})"
    for ch in reason:
        if ch in "\n\r":
            return "a reason is one line: it has a line break"
        # Cc: control characters; Cf (bidi overrides, zero-width) reorders or hides text;
        # Zl/Zp: Unicode's own line and paragraph separators; Cs: lone surrogates. The
        # zero-width joiner stays allowed: emoji sequences are made of it.
        if ch != "\u200d" and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            return f"a reason may not hold control or invisible characters (found U+{ord(ch):04X})"
    return None


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
