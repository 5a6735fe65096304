"""Check state lifecycle (DESIGN 5c), pure: soft/hard attempts and flapping.

Nagios semantics: a non-OK result after OK starts attempt 1 as *soft*; further
non-OK results count attempts up to ``max_attempts``, where the state becomes
*hard*. Only a hard state is a real problem worth a notice; soft states let a
rule act early (``attempt_advanced``) without paging anyone.

Flapping uses the *plain share* of state changes among the last 21 results
(20 transitions), not Nagios's 0.8..1.2 weighting: it is simpler to explain in a
chat message ("60% of recent results changed state") and the thresholds mean the
same. The denominator is always 20, so a young check whose only change is its
first failure is not called flapping.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from opsroom.catalog.schema import STATES

HISTORY_SIZE = 21
_TRANSITIONS = HISTORY_SIZE - 1


@dataclass(frozen=True, slots=True)
class CheckStatus:
    state: str  # one of STATES
    state_type: str  # "soft" | "hard"
    attempt: int
    since: float  # time of the last state change
    last_change_hard: bool  # the last state change was a hard state change (Nagios notification point)
    history: tuple[str, ...]  # states of the last HISTORY_SIZE results, oldest first
    flapping: bool
    change_ratio: float


@dataclass(frozen=True, slots=True)
class Transition:
    status: CheckStatus
    changed: bool  # state or state_type changed: emits check.state_changed
    became_hard: bool  # a hard state change: soft->hard problem, hard problem->other state
    flapping_changed: bool
    old_state: str
    old_type: str
    attempt_advanced: bool  # a further non-OK attempt (e.g. the 2nd soft one), for early rules


def initial(*, now: float = 0.0) -> CheckStatus:
    """A check nobody has run yet is presumed OK, so its first failure starts a soft attempt 1."""
    return CheckStatus(state="OK", state_type="hard", attempt=1, since=now, last_change_hard=True,
                       history=(), flapping=False, change_ratio=0.0)


def change_ratio(history: tuple[str, ...]) -> float:
    """Share of the 20 transitions in a full window that changed state."""
    changes = sum(1 for a, b in itertools.pairwise(history) if a != b)
    return changes / _TRANSITIONS


def apply(status: CheckStatus, new_state: str, *, now: float, max_attempts: int, flap_low: float,
          flap_high: float) -> Transition:
    """Fold one result into the status."""
    if new_state not in STATES:
        raise ValueError(f"unknown check state {new_state!r}; expected one of {', '.join(STATES)}")
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if _steady(status, new_state, max_attempts):
        # The common case by far (an OK check staying OK): nothing changes, so nothing is rebuilt.
        return Transition(status=status, changed=False, became_hard=False, flapping_changed=False,
                          old_state=new_state, old_type="hard", attempt_advanced=False)
    return fold(status, new_state, now=now, max_attempts=max_attempts, flap_low=flap_low, flap_high=flap_high)


def fold(status: CheckStatus, new_state: str, *, now: float, max_attempts: int, flap_low: float,
         flap_high: float) -> Transition:
    """apply() without its shortcut for a steady state: the whole computation, every time."""
    old_state, old_type, old_attempt = status.state, status.state_type, status.attempt
    # Clamp: max_attempts may have been lowered by a catalog reload since the last result.
    old_attempt = min(old_attempt, max_attempts)
    hard_change = False

    if new_state == "OK":
        state_type, attempt = "hard", 1
        # Recovery from a hard problem is a hard state change (it notifies); a soft
        # recovery is not, because nobody was told about the soft problem.
        hard_change = old_state != "OK" and old_type == "hard"
    elif old_state == "OK":
        attempt = 1
        state_type = "hard" if max_attempts == 1 else "soft"
        hard_change = state_type == "hard"
    elif old_type == "soft":
        attempt = min(old_attempt + 1, max_attempts)
        state_type = "hard" if attempt >= max_attempts else "soft"
        hard_change = state_type == "hard"
    else:
        # Hard problem stays hard; CRITICAL -> WARNING is a hard change of state.
        state_type, attempt = "hard", max_attempts
        hard_change = new_state != old_state

    changed = new_state != old_state or state_type != old_type
    attempt_advanced = new_state != "OK" and old_state != "OK" and attempt > old_attempt

    history = (*status.history, new_state)[-HISTORY_SIZE:]
    ratio = change_ratio(history)
    flapping = status.flapping
    if not flapping and ratio > flap_high:
        flapping = True
    elif flapping and ratio < flap_low:
        flapping = False

    new = replace(
        status,
        state=new_state,
        state_type=state_type,
        attempt=attempt,
        # The first result dates the state too: a check OK from its first run has been OK since
        # then, not since the presumed OK of initial() (shown as 1970 before).
        since=now if new_state != old_state or not status.history else status.since,
        last_change_hard=hard_change if changed else status.last_change_hard,
        history=history,
        flapping=flapping,
        change_ratio=ratio,
    )
    return Transition(status=new, changed=changed, became_hard=hard_change,
                      flapping_changed=flapping != status.flapping, old_state=old_state, old_type=old_type,
                      attempt_advanced=attempt_advanced)


_UNIFORM = {state: (state,) * HISTORY_SIZE for state in STATES}


def _steady(status: CheckStatus, new_state: str, max_attempts: int) -> bool:
    """The same hard state again over a full, uniform history: apply() would return an equal status."""
    return (new_state == status.state and status.state_type == "hard" and not status.flapping
            and status.change_ratio == 0.0 and status.history == _UNIFORM[new_state]
            and status.attempt == (1 if new_state == "OK" else max_attempts))
