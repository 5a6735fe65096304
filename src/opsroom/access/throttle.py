"""Login throttling: per user name and per client address, counted before the password is checked.

In memory, per server process: a restart forgets the counts, and each server of a cluster
counts on its own (an attacker gets at most N times the budget for N servers). That is
acceptable for its purpose, which is to make guessing slow and to keep argon2 from being
run hundreds of times a second, not to be an exact global quota.

An attempt is counted when it starts, not when it fails, so 150 attempts that arrive at the
same moment are held to the budget too; a successful login takes its own attempt back and
clears the user's count (never the address's: one valid account must not reset a spray).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 300.0  # failures older than this are forgotten
USER_FAILURES = 5  # per user name within the window, then a lockout that grows
ADDRESS_FAILURES = 30  # per client address: several people behind one NAT mistype too
BASE_LOCK_S = 30.0  # first lockout; doubles with every further failure
MAX_LOCK_S = WINDOW_S  # attempts older than the window no longer count, so neither do their locks
PRUNE_AT = 10_000  # keys kept before forgetting the stale ones
AUDIT_EVERY_S = 10.0  # a refused flood is audited at most this often per key, with a count


@dataclass
class _Key:
    attempts: deque[float] = field(default_factory=deque)  # started and not succeeded, within the window
    suppressed: int = 0  # throttled attempts not audited one by one
    last_audit: float = -AUDIT_EVERY_S


@dataclass(frozen=True)
class Refusal:
    key: str  # "user:NAME" or "address:ADDR"
    retry_after: float  # seconds
    audit: bool  # false while the same key was audited recently
    suppressed: int  # throttled attempts since the last audited one


class LoginThrottle:
    def __init__(self) -> None:
        self._keys: dict[str, _Key] = {}
        self.now = time.monotonic  # tests may replace the clock
        self._pruned = 0.0

    def _entry(self, key: str, now: float) -> _Key:
        entry = self._keys.setdefault(key, _Key())
        while entry.attempts and entry.attempts[0] < now - WINDOW_S:
            entry.attempts.popleft()
        return entry

    @staticmethod
    def _limits(user: str, address: str | None) -> list[tuple[str, int]]:
        keys = [(f"user:{user}", USER_FAILURES)]
        if address:
            keys.append((f"address:{address}", ADDRESS_FAILURES))
        return keys

    def begin(self, user: str, address: str | None) -> Refusal | None:
        """Count an attempt about to check a password, or refuse it (a refusal is not counted)."""
        now = self.now()
        if len(self._keys) > PRUNE_AT and now - self._pruned > 10:
            self.prune()
        for key, limit in self._limits(user, address):
            entry = self._entry(key, now)
            excess = len(entry.attempts) - limit
            if excess < 0:
                continue
            # Locked from the last attempt for a time that doubles with every attempt over the limit.
            wait = entry.attempts[-1] + min(MAX_LOCK_S, BASE_LOCK_S * 2 ** min(excess, 10)) - now
            if wait > 0:
                audit = now - entry.last_audit >= AUDIT_EVERY_S
                suppressed = entry.suppressed
                if audit:
                    entry.last_audit, entry.suppressed = now, 0
                else:
                    entry.suppressed += 1
                return Refusal(key, wait, audit, suppressed)
        for key, _limit in self._limits(user, address):
            self._entry(key, now).attempts.append(now)
        return None

    def succeeded(self, user: str, address: str | None) -> None:
        """A right password: the user's count starts again; the address gets its attempt back."""
        self._keys.pop(f"user:{user}", None)
        entry = self._keys.get(f"address:{address}") if address else None
        if entry is not None and entry.attempts:
            entry.attempts.pop()

    def prune(self) -> None:
        """Forget keys with nothing left to remember (bounded memory under a spray of names)."""
        self._pruned = self.now()
        cutoff = self._pruned - WINDOW_S
        for key in [k for k, e in self._keys.items() if not e.attempts or e.attempts[-1] < cutoff]:
            del self._keys[key]
