"""Fixtures of the worker tests: a vhost of each module's own, a PostgreSQL database per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workers.harness import Site, amqp_url, rabbit_vhost


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    with rabbit_vhost() as name:
        yield name


@pytest.fixture
def site(tmp_path: Path, pg_own_url: str, vhost: str) -> Iterator[Site]:
    s = Site(root=tmp_path, database_url=pg_own_url, brokers={"prod": amqp_url(vhost)})
    try:
        yield s
    finally:
        s.stop_workers()
