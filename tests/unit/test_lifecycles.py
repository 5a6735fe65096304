"""The execution and approval lifecycles of DESIGN 5c, pure."""

from __future__ import annotations

import pytest

from opsroom.domain.approval import may_vote
from opsroom.domain.execution import TRANSITIONS, IllegalTransition, advance


@pytest.mark.parametrize(("old", "new"), [(o, n) for o, nxt in TRANSITIONS.items() for n in sorted(nxt)])
def test_allowed_transitions_advance(old: str, new: str) -> None:
    assert advance(old, new) == new


@pytest.mark.parametrize(("old", "new"), [
    ("succeeded", "running"),  # finished runs are never re-run
    ("interrupted", "running"),
    ("interrupted", "pending"),
    ("denied", "pending"),
    ("expired", "running"),
    ("awaiting_approval", "succeeded"),  # nothing finishes without running
    ("pending", "succeeded"),
    ("running", "awaiting_approval"),
])
def test_forbidden_transitions_raise(old: str, new: str) -> None:
    with pytest.raises(IllegalTransition, match=f"from {old} to {new}"):
        advance(old, new)


def test_final_states_have_no_way_out() -> None:
    for final in ("succeeded", "failed", "timed_out", "interrupted", "denied", "expired"):
        assert TRANSITIONS[final] == frozenset()


def test_requester_never_votes_even_with_the_role() -> None:
    common = dict(status="open", expired=False, requester_id=7, requester="lead", roles=["approver"])
    assert not may_vote(**common, voter_id=7, voter="lead", voter_roles=frozenset({"approver"})).allowed
    assert not may_vote(**common, voter_id=8, voter="dev", voter_roles=frozenset({"viewer"})).allowed
    assert may_vote(**common, voter_id=8, voter="boss", voter_roles=frozenset({"approver"})).allowed
    assert not may_vote(**{**common, "expired": True}, voter_id=8, voter="boss",
                        voter_roles=frozenset({"approver"})).allowed
