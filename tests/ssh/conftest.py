"""One real sshd on loopback for the whole folder (starting one costs two key generations)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ssh import sshd


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.Sshd]:
    with sshd.running(Path(tmp_path_factory.mktemp("sshd"))) as running:
        yield running
