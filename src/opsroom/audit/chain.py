"""The hash chain: each record's hash covers its content and the previous hash.

Two hashed forms, named by the record's `v` column (docs/audit.md, "Record versions"):

  v1  the first form: a JSON array with sorted keys inside `details`, kept so stores written
      before v2 still verify as they were written (re-chaining them would hide tampering);
  v2  RFC 8785 canonical JSON of the record as an object that carries "v": 2 itself, so a
      verifier elsewhere rebuilds it with any JCS library.

New records are always v2. A record's `v` is not a way around the hash: whichever form it
names must reproduce the stored hash, and the chain and the signed checkpoints cover both.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from opsroom.audit import jcs

GENESIS = "0" * 64
CURRENT = 2
VERSIONS = (1, 2)

_sha256 = hashlib.sha256
_s = jcs._string  # the C escaper: a record's fields are written without the general walker


def record_hash(*, seq: int, at: float, actor: str, door: str, action: str, target: str, outcome: str,
                details: dict[str, Any], correlation_id: str | None, prev_hash: str, v: int = CURRENT) -> str:
    """The hash of one record in the form its version names."""
    if v == 2:
        return _sha256(v2_text(seq, at, actor, door, action, target, outcome, details, correlation_id,
                               prev_hash).encode()).hexdigest()
    if v == 1:
        return v1_hash(seq=seq, at=at, actor=actor, door=door, action=action, target=target, outcome=outcome,
                       details=details, correlation_id=correlation_id, prev_hash=prev_hash)
    raise ValueError(f"unknown audit record version {v}")


def v2_text(seq: int, at: float, actor: str, door: str, action: str, target: str, outcome: str,
            details: dict[str, Any], correlation_id: str | None, prev_hash: str) -> str:
    """jcs.dumps(v2_object(record)), written directly: verify runs this a million times."""
    return v2_text_of(seq, at, actor, door, action, target, outcome, details_text(details), correlation_id,
                      prev_hash)


def v2_text_of(seq: int, at: float, actor: str, door: str, action: str, target: str, outcome: str,
               details: str, correlation_id: str | None, prev_hash: str) -> str:
    """v2_text() with `details` already in canonical text (as the store keeps it). The members are
    written in their JCS order (sorted keys) by hand; verify.walk inlines this same text."""
    t = repr(at)
    t = jcs.number(at) if "e" in t or "n" in t else t[:-2] if t.endswith(".0") else t
    return (f'{{"action":{_s(action)},"actor":{_s(actor)},"at":{t},'
            f'"correlation_id":{"null" if correlation_id is None else _s(correlation_id)},'
            f'"details":{details},"door":{_s(door)},"outcome":{_s(outcome)},'
            f'"prev_hash":{_s(prev_hash)},"seq":{seq},"target":{_s(target)},"v":2}}')


def v2_object(record: dict[str, Any]) -> dict[str, Any]:
    """The record as the object v2 hashes (for docs and for auditors' tools: jcs.dumps of this)."""
    keys = ("seq", "at", "actor", "door", "action", "target", "outcome", "details", "correlation_id", "prev_hash")
    obj = {k: record[k] for k in keys}
    obj["v"] = 2
    return obj


# The C encoder writes what JCS writes for strings, small integers, true/false/null and objects
# whose keys are ASCII (code point order is then UTF-16 order). Its text is used unless it may
# hold a float, an integer past 2**53 (sixteen digits or more) or anything non-ASCII; then the
# general walker decides. A false alarm costs time, never a different form.
_C = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
# JSONEncoder.encode builds its C encoder on every call; built once, it is a quarter of the cost.
_c_make = getattr(json.encoder, "c_make_encoder", None)
_c = _c_make(None, None, _s, None, ":", ",", True, False, True) if _c_make else None
_RISKY = re.compile(r"[:,\[]-?(?:\d+[.eE]|\d{16}|Infinity|NaN)")


def details_text(details: dict[str, Any]) -> str:
    """jcs.dumps(details), by the C encoder when its text is the canonical one."""
    if not details:
        return "{}"
    text = "".join(_c(details, 0)) if _c else _C.encode(details)
    if text.isascii() and not _RISKY.search(text):
        return text
    return jcs.dumps(details)


def v1_hash(*, seq: int, at: float, actor: str, door: str, action: str, target: str, outcome: str,
            details: dict[str, Any], correlation_id: str | None, prev_hash: str) -> str:
    # Times are hashed at microsecond precision so a float round-trip through a
    # database column cannot change the hash.
    body = json.dumps(
        [seq, f"{at:.6f}", actor, door, action, target, outcome, details, correlation_id, prev_hash],
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
    )
    return _sha256(body.encode()).hexdigest()


def as_stored(details: dict[str, Any]) -> dict[str, Any]:
    """`details` as the store gives it back (a JSON round trip: tuples become lists, int keys
    strings), so the hash taken at append time is the one verify recomputes from the row. What
    RFC 8785 has no form for becomes text rather than refusing the action being recorded: NaN
    and infinities their names, a lone surrogate "?"."""
    text = json.dumps(details, default=str, ensure_ascii=False).encode("utf-8", "replace").decode("utf-8")
    return json.loads(text, parse_constant=str)  # type: ignore[no-any-return]
