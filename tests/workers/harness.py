"""Real pieces for the worker tests: a RabbitMQ vhost of the test's own, an in-process server on
PostgreSQL with a broker for `prod`, and `opsroom worker` processes started as an operator would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from opsroom import server
from opsroom.access.identity import Actor
from opsroom.cluster.models import NodeRow
from opsroom.config import Settings
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from opsroom.workers.models import WorkerStepRow

OPSROOM = str(Path(sys.executable).with_name("opsroom"))
RABBIT = os.environ.get("OPSROOM_TEST_RABBIT", "127.0.0.1:5672")
ADMIN = Actor("tester", "cli", frozenset({"admin"}), frozenset({"*"}))

CATALOG = """\
environments:
  - name: prod
  - name: test
systems:
  - name: shop
    title: Shop
    environment: prod
services:
  - name: web
    system: shop
runbooks:
  - name: hello
    environment: prod
    approval: none
    parameters:
      who: {type: string, default: world}
    steps:
      - command: ["sh", "-c", "echo one {{ params.who }}; echo two; echo three"]
      - command: ["sh", "-c", "echo four"]
  - name: slow
    environment: prod
    approval: none
    steps:
      - command: ["sh", "-c", "echo started >> \\"$MARKER\\"; echo began; sleep 30; echo done"]
        env: {MARKER: "{{ data_dir }}/../marker"}
  - name: fails
    environment: prod
    approval: none
    steps:
      - command: ["sh", "-c", "echo bad; exit 3"]
  - name: on-test
    environment: test
    approval: none
    steps:
      - command: ["sh", "-c", "echo test-env"]
rooms:
  - name: ops
    systems: [shop]
"""


def rabbitmqctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=check)


@contextlib.contextmanager
def rabbit_vhost() -> Iterator[str]:
    """A vhost of this test's own (guest may use it), deleted after with every queue in it."""
    name = f"opsroom-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name, check=False)


def amqp_url(vhost: str, user: str = "guest", password: str = "guest") -> str:
    return f"amqp://{user}:{password}@{RABBIT}/{vhost}"


@dataclass
class Site:
    """Where a test's server and workers live: one catalog, one store, one data dir each."""

    root: Path
    database_url: str
    brokers: dict[str, str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def catalog(self) -> Path:
        return self.root / "catalog"

    def settings(self) -> Settings:
        return Settings(data=self.root / "server", catalog=self.catalog, database_url=self.database_url,
                        brokers=self.brokers)

    def worker_env(self, *, brokers: dict[str, str] | None = None, name: str = "w") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSROOM_")}
        env.update(OPSROOM_DATABASE_URL=self.database_url, OPSROOM_CATALOG=str(self.catalog),
                   OPSROOM_DATA=str(self.root / name), OPSROOM_LOG_LEVEL="warning")
        import json
        env["OPSROOM_BROKERS"] = json.dumps(self.brokers if brokers is None else brokers)
        return env

    def start_worker(self, environment: str = "prod", *, name: str = "w", brokers: dict[str, str] | None = None,
                     extra: list[str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen([OPSROOM, "worker", "--environment", environment, *(extra or [])],
                                env=self.worker_env(brokers=brokers, name=name), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.workers.append(proc)
        return proc

    def log(self, name: str = "w") -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


async def wait_worker(rt: Runtime, proc: subprocess.Popen[bytes], site: Site, *, name: str = "w",
                      timeout: float = 30.0) -> str:
    """The node id of the worker process `proc` once it heartbeats (and Celery has had a moment to consume)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{site.log(name)}")
        async with rt.read() as s:
            found = (await s.execute(select(NodeRow.node_id).where(
                NodeRow.kind == "worker", NodeRow.pid == proc.pid, NodeRow.stopped_at.is_(None)))).scalar()
        if found:
            await asyncio.sleep(1.5)  # the heartbeat starts before Celery's consumer: let it subscribe
            return str(found)
        await asyncio.sleep(0.2)
    raise AssertionError(f"worker never heartbeat:\n{site.log(name)}")


@contextlib.asynccontextmanager
async def running_server(site: Site) -> AsyncIterator[Runtime]:
    site.catalog.mkdir(parents=True, exist_ok=True)
    (site.catalog / "catalog.yaml").write_text(CATALOG)
    rt = await server.open_runtime(site.settings())
    rt.bus.keep_history = True
    await server.start(rt, schedule=False)
    try:
        yield rt
    finally:
        await server.stop(rt)
        await rt.close()


async def run(rt: Runtime, runbook: str, params: dict[str, Any] | None = None) -> ExecutionRow:
    return await runbooks.request_run(rt, actor=ADMIN, runbook=runbook, params=params or {})


async def execution(rt: Runtime, execution_id: int) -> ExecutionRow:
    async with rt.read() as s:
        return await s.get_one(ExecutionRow, execution_id)


async def steps(rt: Runtime, execution_id: int) -> list[WorkerStepRow]:
    async with rt.read() as s:
        return list((await s.execute(select(WorkerStepRow).where(WorkerStepRow.execution_id == execution_id)
                                     .order_by(WorkerStepRow.step))).scalars())


def _events(rt: Runtime, kind: str, execution_id: int) -> list[Any]:
    return [e for e in rt.bus.history if e.type == kind and getattr(e, "execution_id", None) == execution_id]


def finished_events(rt: Runtime, execution_id: int) -> list[Any]:
    return _events(rt, "execution.finished", execution_id)


def output_events(rt: Runtime, execution_id: int) -> list[Any]:
    return _events(rt, "execution.output", execution_id)
