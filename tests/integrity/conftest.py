"""A watched tree in a tmp dir (catalog, scripts, an extra path) and a runtime on a real SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from opsroom.catalog.loader import load_catalog
from opsroom.config import Settings
from opsroom.integrity.events import IntegrityChanged
from opsroom.runtime import Runtime
from opsroom.store.engine import make_engine
from opsroom.store.migrate import upgrade
from tests.factories import write_catalog


@dataclass
class Tree:
    root: Path
    catalog: Path
    scripts: Path
    extra: Path

    @property
    def restart(self) -> Path:
        return self.scripts / "restart.sh"


def make_tree(tmp: Path) -> Tree:
    tmp = tmp / "t"  # beside, never over, a catalog another fixture writes to tmp/catalog
    scripts, extra = tmp / "scripts", tmp / "extra"
    scripts.mkdir(parents=True)
    extra.mkdir()
    for name, body in (("restart.sh", "#!/bin/sh\necho restarting\n"), ("test.sh", "#!/bin/sh\necho test\n"),
                       ("real.sh", "#!/bin/sh\necho real\n"), ("other.sh", "#!/bin/sh\necho other\n")):
        (scripts / name).write_text(body)
        (scripts / name).chmod(0o755)
    (scripts / "link.sh").symlink_to(scripts / "real.sh")
    (extra / "app.conf").write_text("listen 8080\npassword_file /etc/app.pw\n")
    catalog = write_catalog(tmp / "catalog", {
        "environments": [{"name": "prod", "protected": True}, {"name": "test"}],
        "runbooks": [
            {"name": "restart-prod", "environment": "prod",
             "steps": [{"command": ["/bin/sh", str(scripts / "restart.sh")]}]},
            {"name": "restart-test", "environment": "test",
             "steps": [{"command": ["/bin/sh", str(scripts / "test.sh")]}]},
            {"name": "linked-prod", "environment": "prod", "steps": [{"command": [str(scripts / "link.sh")]}]},
        ],
        "rooms": [{"name": "ops"}],
    })
    return Tree(tmp, catalog, scripts, extra)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return make_tree(tmp_path)


async def runtime_for(tree: Tree, **settings: object) -> Runtime:
    values: dict[str, object] = {"data": tree.root / "data", "catalog": tree.catalog,
                                 "integrity_paths": [tree.extra], "integrity_scan_minutes": 60.0}
    values.update(settings)
    s = Settings(**values)  # type: ignore[arg-type]
    s.data.mkdir(parents=True, exist_ok=True)
    engine = make_engine(s.db_url)
    await upgrade(engine)
    return Runtime(settings=s, catalog=load_catalog(tree.catalog), engine=engine)


@contextlib.asynccontextmanager
async def opened(tree: Tree, **settings: object) -> AsyncIterator[Runtime]:
    """A runtime on a fresh SQLite store whose bus keeps what it published."""
    runtime = await runtime_for(tree, **settings)
    runtime.bus.keep_history = True
    try:
        yield runtime
    finally:
        await runtime.bus.drain()
        await runtime.close()


@pytest.fixture
async def rt(tree: Tree) -> AsyncIterator[Runtime]:
    async with opened(tree) as runtime:
        yield runtime


def changes(rt: Runtime) -> list[IntegrityChanged]:
    return [e for e in rt.bus.history if isinstance(e, IntegrityChanged)]


async def wait_for(rt: Runtime, found: Callable[[dict[str, object]], bool], *, timeout: float = 5.0,
                   found_by: str | None = None) -> tuple[IntegrityChanged, dict[str, object]]:
    """The first change (of an IntegrityChanged on the bus) that `found` accepts."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for ev in changes(rt):
            for change in ev.changes:
                if found(change) and (found_by is None or ev.found_by == found_by):
                    return ev, change
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no such change within {timeout} s; seen: {[e.changes for e in changes(rt)]}")
        await asyncio.sleep(0.02)
