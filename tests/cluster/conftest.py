"""Fixtures shared by the cluster tests. Additive: each helper's fixture is its own block."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.pgserver import PrivatePg, available, private_postgres


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePg]:
    """A PostgreSQL of this test module's own (tests kill and restart it; the machine's shared one
    serves others). Module-scoped: a test that leaves it killed cannot break another module."""
    why = available()
    if why:
        pytest.skip(why)
    with private_postgres() as pg:
        yield pg
