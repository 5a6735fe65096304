"""The check state lifecycle (DESIGN 5c): soft/hard attempts and flapping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsroom.catalog.schema import STATES
from opsroom.domain.check_state import HISTORY_SIZE, CheckStatus, Transition, apply, fold, initial

FLAP = {"flap_low": 0.25, "flap_high": 0.5}


def feed(states: list[str], *, max_attempts: int = 3, start: CheckStatus | None = None,
         flap_low: float = 0.25, flap_high: float = 0.5) -> list[Transition]:
    status = start or initial()
    out = []
    for i, s in enumerate(states):
        tr = apply(status, s, now=float(i + 1), max_attempts=max_attempts, flap_low=flap_low, flap_high=flap_high)
        out.append(tr)
        status = tr.status
    return out


def summary(tr: Transition) -> tuple[str, str, int, bool]:
    return tr.status.state, tr.status.state_type, tr.status.attempt, tr.changed


# --- examples -------------------------------------------------------------


def test_initial_is_ok_hard_attempt_one() -> None:
    s = initial()
    assert (s.state, s.state_type, s.attempt, s.flapping, s.history) == ("OK", "hard", 1, False, ())


def test_soft_attempts_then_hard() -> None:
    trs = feed(["CRITICAL", "CRITICAL", "CRITICAL", "CRITICAL"])
    assert [summary(t) for t in trs] == [
        ("CRITICAL", "soft", 1, True),
        ("CRITICAL", "soft", 2, False),
        ("CRITICAL", "hard", 3, True),
        ("CRITICAL", "hard", 3, False),
    ]
    assert [t.attempt_advanced for t in trs] == [False, True, True, False]
    assert [t.became_hard for t in trs] == [False, False, True, False]
    assert trs[2].old_type == "soft" and trs[2].old_state == "CRITICAL"
    # since is the time of the state change, not of the type change
    assert trs[3].status.since == 1.0


def test_max_attempts_one_is_hard_at_once() -> None:
    (tr,) = feed(["CRITICAL"], max_attempts=1)
    assert summary(tr) == ("CRITICAL", "hard", 1, True)
    assert tr.became_hard and tr.status.last_change_hard


def test_state_change_while_soft_keeps_counting() -> None:
    trs = feed(["WARNING", "CRITICAL", "UNKNOWN"])
    assert [summary(t) for t in trs] == [
        ("WARNING", "soft", 1, True),
        ("CRITICAL", "soft", 2, True),
        ("UNKNOWN", "hard", 3, True),
    ]
    assert trs[1].status.since == 2.0


def test_hard_problem_changing_state_stays_hard_and_is_a_change() -> None:
    trs = feed(["CRITICAL"] * 3 + ["WARNING", "WARNING"])
    assert summary(trs[3]) == ("WARNING", "hard", 3, True)
    assert trs[3].became_hard and trs[3].old_state == "CRITICAL"
    assert summary(trs[4]) == ("WARNING", "hard", 3, False)


def test_hard_recovery() -> None:
    trs = feed(["CRITICAL"] * 3 + ["OK", "OK"])
    assert summary(trs[3]) == ("OK", "hard", 1, True)
    assert trs[3].became_hard and trs[3].old_state == "CRITICAL" and trs[3].old_type == "hard"
    assert trs[3].status.since == 4.0
    assert summary(trs[4]) == ("OK", "hard", 1, False)


def test_soft_recovery_is_a_change_but_not_a_hard_one() -> None:
    trs = feed(["CRITICAL", "OK"])
    assert summary(trs[1]) == ("OK", "hard", 1, True)
    assert trs[1].old_type == "soft"
    assert not trs[1].became_hard and not trs[1].status.last_change_hard


def test_lowered_max_attempts_is_clamped() -> None:
    soft = feed(["CRITICAL"] * 4, max_attempts=5)[-1].status
    assert soft.attempt == 4
    tr = apply(soft, "CRITICAL", now=9.0, max_attempts=2, **FLAP)
    assert summary(tr) == ("CRITICAL", "hard", 2, True)


def test_unknown_state_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown check state"):
        apply(initial(), "DOWN", now=1.0, max_attempts=3, **FLAP)


def test_history_is_bounded() -> None:
    trs = feed(["OK", "CRITICAL"] * 30)
    assert len(trs[-1].status.history) == HISTORY_SIZE


def test_flapping_starts_above_high_and_clears_below_low() -> None:
    trs = feed(["OK", "CRITICAL"] * 15 + ["OK"] * 25)
    flags = [t.status.flapping for t in trs]
    start = flags.index(True)
    # 11 changes out of 20 transitions is the first share above 0.5
    assert trs[start].status.change_ratio > 0.5
    assert trs[start - 1].status.change_ratio <= 0.5
    assert trs[start].flapping_changed
    stop = flags.index(False, start)
    assert trs[stop].status.change_ratio < 0.25 and trs[stop].flapping_changed
    assert trs[stop - 1].status.change_ratio >= 0.25
    assert sum(t.flapping_changed for t in trs) == 2


def test_hysteresis_between_thresholds() -> None:
    # Once flapping, a ratio between low and high keeps it flapping.
    trs = feed(["OK", "CRITICAL"] * 15 + (["OK"] * 3 + ["CRITICAL"] * 3) * 6)
    tail = [t for t in trs[30:] if 0.25 <= t.status.change_ratio < 0.5]
    assert len(tail) >= 5 and all(t.status.flapping for t in tail)


def test_first_failure_is_not_flapping() -> None:
    (tr,) = feed(["CRITICAL"], flap_low=0.0, flap_high=0.04)
    assert tr.status.change_ratio == 0.0
    trs = feed(["OK", "CRITICAL"], flap_low=0.0, flap_high=0.04)
    assert trs[-1].status.change_ratio == pytest.approx(1 / 20)
    assert trs[-1].status.flapping


# --- properties -----------------------------------------------------------

states = st.sampled_from(STATES)
streams = st.lists(states, min_size=1, max_size=80)
attempts = st.integers(min_value=1, max_value=6)


@settings(max_examples=300, deadline=None)
@given(stream=streams, max_attempts=attempts)
def test_invariants(stream: list[str], max_attempts: int) -> None:
    prev = initial()
    for i, s in enumerate(stream):
        tr = apply(prev, s, now=float(i), max_attempts=max_attempts, **FLAP)
        new = tr.status
        assert 1 <= new.attempt <= max_attempts
        assert new.state == s
        if new.state_type == "hard":
            assert new.state == "OK" or new.attempt == max_attempts
        else:
            assert new.state != "OK" and new.attempt < max_attempts
        if new.state == "OK":
            assert new.state_type == "hard" and new.attempt == 1
        assert tr.changed == (new.state != prev.state or new.state_type != prev.state_type)
        assert tr.old_state == prev.state and tr.old_type == prev.state_type
        assert tr.flapping_changed == (new.flapping != prev.flapping)
        assert len(new.history) <= HISTORY_SIZE and new.history[-1] == s
        assert 0.0 <= new.change_ratio <= 1.0
        if tr.became_hard:
            assert new.state_type == "hard" and tr.changed
        if tr.attempt_advanced:
            assert new.attempt == prev.attempt + 1
        # since moves exactly when the state does
        assert new.since == (float(i) if new.state != prev.state else prev.since)
        prev = new


@settings(max_examples=100, deadline=None)
@given(n=st.integers(min_value=1, max_value=60), max_attempts=attempts)
def test_all_ok_stream_never_changes(n: int, max_attempts: int) -> None:
    for tr in feed(["OK"] * n, max_attempts=max_attempts):
        assert not tr.changed and not tr.became_hard and not tr.flapping_changed and not tr.attempt_advanced
        # OK since the first result (now=1.0), not since the presumed OK of initial().
        assert tr.status.change_ratio == 0.0 and tr.status.since == 1.0


@settings(max_examples=200, deadline=None)
@given(bad=st.sampled_from(["WARNING", "CRITICAL", "UNKNOWN"]), max_attempts=attempts,
       extra=st.integers(min_value=0, max_value=5))
def test_constant_problem_becomes_hard_after_max_attempts(bad: str, max_attempts: int, extra: int) -> None:
    trs = feed([bad] * (max_attempts + extra), max_attempts=max_attempts)
    assert [t.status.state_type for t in trs[: max_attempts - 1]] == ["soft"] * (max_attempts - 1)
    assert all(t.status.state_type == "hard" for t in trs[max_attempts - 1:])
    # two changes at most: OK->soft problem, soft->hard (one when max_attempts is 1)
    assert sum(t.changed for t in trs) == (1 if max_attempts == 1 else 2)
    assert sum(t.became_hard for t in trs) == 1


@settings(max_examples=200, deadline=None)
@given(stream=streams)
def test_flapping_follows_thresholds(stream: list[str]) -> None:
    prev = initial()
    for i, s in enumerate(stream):
        new = apply(prev, s, now=float(i), max_attempts=3, **FLAP).status
        if new.change_ratio > FLAP["flap_high"]:
            assert new.flapping
        if new.change_ratio < FLAP["flap_low"]:
            assert not new.flapping
        prev = new


# (state, how many in a row, max_attempts then: a catalog reload may lower it mid-problem)
runs = st.lists(st.tuples(st.sampled_from(STATES), st.integers(min_value=1, max_value=30), attempts),
                min_size=1, max_size=8)


@given(runs=runs, low=st.sampled_from([0.1, 0.25]), high=st.sampled_from([0.3, 0.5, 0.9]))
@settings(max_examples=300)
def test_the_steady_state_shortcut_gives_what_the_whole_fold_gives(
        runs: list[tuple[str, int, int]], low: float, high: float) -> None:
    """apply() skips the work for a repeated hard state; every transition must equal fold()'s."""
    status = initial()
    t = 0.0
    for state, count, max_attempts in runs:
        for _ in range(count):
            t += 1.0
            kw = {"now": t, "max_attempts": max_attempts, "flap_low": low, "flap_high": high}
            fast, full = apply(status, state, **kw), fold(status, state, **kw)
            assert fast == full
            status = full.status
