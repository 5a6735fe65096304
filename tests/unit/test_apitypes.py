"""The API's shared pieces alone: cursors round-trip and refuse what they did not make; times are UTC."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import BaseModel, ValidationError

from opsroom.errors import Invalid
from opsroom.web.apitypes import MAX_KEY, UtcTime, decode_cursor, encode_cursor


def test_a_cursor_round_trips_for_its_own_list_only() -> None:
    for key in (0, 1, 12345, MAX_KEY):
        assert decode_cursor("executions", encode_cursor("executions", key)) == key
    assert decode_cursor("room:ops", encode_cursor("room:ops", 7)) == 7
    assert decode_cursor("executions", None) is None
    with pytest.raises(Invalid, match="not one this list gave"):
        decode_cursor("audit", encode_cursor("executions", 5))
    with pytest.raises(Invalid):
        decode_cursor("executions", encode_cursor("executions", MAX_KEY + 1))  # past the store's int4 ids


class _At(BaseModel):
    at: UtcTime
    maybe: UtcTime | None = None


def test_epoch_seconds_and_naive_times_become_utc_instants() -> None:
    got = _At(at=1.5, maybe=dt.datetime(2026, 1, 1, 12))  # naive on purpose: it is read as UTC
    assert got.at == dt.datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=dt.UTC)
    assert got.maybe is not None and got.maybe.tzinfo is dt.UTC
    assert got.model_dump_json() == '{"at":"1970-01-01T00:00:01.500000Z","maybe":"2026-01-01T12:00:00Z"}'
    with pytest.raises(ValidationError):
        _At(at=True)  # a flag is no time
