"""The one backoff every adapter and the send queue use, and Retry-After as platforms send it."""

from __future__ import annotations

import pytest

from opsroom.chat.backoff import BACKOFF_MAX_S, Backoff, retry_after_s


@pytest.mark.parametrize(("header", "seconds"), [
    ("3", 3.0), ("0.5", 0.5), ("0", 0.0), (None, 1.0), ("", 1.0), ("soon", 1.0),
    ("-4", 1.0), ("inf", 1.0), ("nan", 1.0), ("Wed, 21 Oct 2026 07:28:00 GMT", 1.0),
])
def test_retry_after_reads_seconds_and_waits_the_default_otherwise(header: str | None, seconds: float) -> None:
    assert retry_after_s(header) == seconds


def test_backoff_doubles_to_its_ceiling_with_jitter_and_starts_over() -> None:
    b = Backoff()
    waits = [b.next_wait() for _ in range(10)]
    assert 0.25 <= waits[0] <= 0.75  # 0.5 s, jittered by half either way
    assert all(w <= BACKOFF_MAX_S * 1.5 for w in waits) and b.delay == BACKOFF_MAX_S
    assert b.next_wait(at_least=100) >= BACKOFF_MAX_S  # what the platform asked, up to the ceiling
    b.reset()
    assert b.next_wait() <= 0.75
    b.hold()
    assert b.next_wait() >= BACKOFF_MAX_S / 2
