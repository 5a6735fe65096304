"""Acceptance 7 of issue 14 and its PostgreSQL counterpart: a backup taken from a live store, while
a real server keeps writing (checks running, audited runbook runs), restores to a store whose
audit chain verifies. SQLite with `opsroom backup` / `restore`; PostgreSQL with pg_dump -Fc and
pg_restore into a new database, as docs/operations.md says."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import PG_ADMIN, pg_admin
from tests.e2e.harness import cli, start_server
from tests.factories import small_catalog

pytestmark = pytest.mark.e2e


@dataclass
class Load:
    """Audited runbook runs asked of the server over its API, one after another, until stopped."""

    base: str
    token: str
    runs: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base + "/api/v1", timeout=30,
                          headers={"Authorization": f"Bearer {self.token}"}) as api:
            n = 0
            while not self.stop.is_set():
                try:
                    resp = api.post("/runbooks/count/run", json={"params": {"n": str(n % 1000)}})
                except httpx.HTTPError as exc:  # reported by the test, not lost with the thread
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.2)
                    continue
                if resp.status_code == 202:
                    self.runs.append(resp.json()["id"])
                else:
                    self.failures.append(f"{resp.status_code} {resp.text[:200]}")
                n += 1
                time.sleep(0.02)

    def until(self, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while len(self.runs) < count:
            assert time.monotonic() < deadline, (len(self.runs), self.failures[:3])
            time.sleep(0.05)


@contextlib.contextmanager
def busy_server(tmp: Path, env: dict[str, str]) -> Iterator[tuple[Path, Load]]:
    """A real `opsroom serve` whose checks run every second and whose API gets runbook runs."""
    catalog = small_catalog(tmp, checks=[
        {"name": f"svc-cmd-{i}", "type": "command", "service": "svc", "interval": "1s",
         "argv": [sys.executable, "-c", "print('OK - fine')"]} for i in range(3)])
    env = {**env, "OPSROOM_CHECK_RESULT_OK_INTERVAL": "0"}  # every result stored: the store keeps moving
    server = start_server(tmp, ["serve", "--catalog", str(catalog)], env_extra=env)
    try:
        made = cli("token", "create", "you", "--data", str(server.data), "--catalog", str(catalog), env=env)
        assert made.returncode == 0, made.stderr
        load = Load(server.base, made.stdout.strip())
        writer = threading.Thread(target=load.run, daemon=True)
        writer.start()
        try:
            load.until(10)
            yield server.data, load
        finally:
            load.stop.set()
            writer.join(15)
        assert not load.failures, load.failures[:3]
    finally:
        server.stop()


def _count(db: Path, sql: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute(sql).fetchone()[0])


@pytest.mark.timeout(300)  # a server and six CLI processes on a shared machine
def test_a_backup_of_a_live_sqlite_store_restores_and_verifies(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o700)
    with busy_server(tmp_path, {}) as (data, load):
        before = len(load.runs)
        taken = cli("backup", str(backups / "mid.db"), "--data", str(data))
        assert taken.returncode == 0, taken.stdout + taken.stderr
        load.until(before + 10)  # the server kept writing across it
    assert "written to" in taken.stdout and "integrity ok" in taken.stdout and "schema revision" in taken.stdout
    assert (backups / "mid.db").stat().st_mode & 0o777 == 0o600
    restored = cli("restore", str(backups / "mid.db"), "--data", str(tmp_path / "restored"))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    verified = cli("audit", "verify", "--data", str(tmp_path / "restored"))
    assert verified.returncode == 0 and "chain intact" in verified.stdout, verified.stdout + verified.stderr
    copy, live = tmp_path / "restored" / "opsroom.db", data / "opsroom.db"
    in_copy = _count(copy, "SELECT count(*) FROM audit_records WHERE action = 'runbook.run'")
    assert 10 <= in_copy < _count(live, "SELECT count(*) FROM audit_records WHERE action = 'runbook.run'")
    assert _count(copy, "SELECT count(*) FROM check_results") > 0
    assert _count(copy, "SELECT count(*) FROM executions") >= in_copy
    assert cli("audit", "verify", "--data", str(data)).returncode == 0  # the live one is intact too


def _pg(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(300)
def test_pg_dump_of_a_live_postgresql_store_restores_into_a_new_database_and_verifies(
        tmp_path: Path, pg_own_url: str) -> None:
    env = {"OPSROOM_DATABASE_URL": pg_own_url}
    refused = cli("backup", str(tmp_path / "x.db"), env=env)
    assert refused.returncode == 1 and "pg_dump --format=custom" in refused.stderr, refused.stderr
    dump = tmp_path / "opsroom.dump"
    with busy_server(tmp_path, env) as (_data, load):
        before = len(load.runs)
        dumped = _pg("pg_dump", "--format=custom", f"--file={dump}", pg_own_url)  # what the hint and docs say
        assert dumped.returncode == 0, dumped.stderr
        load.until(before + 10)
    name = f"opsroom_restore_{uuid.uuid4().hex[:8]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        target = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
        loaded = _pg("pg_restore", "--no-owner", "--exit-on-error", f"--dbname={target}", str(dump))
        assert loaded.returncode == 0, loaded.stderr
        verified = cli("audit", "verify", env={"OPSROOM_DATABASE_URL": target})
        assert verified.returncode == 0 and "chain intact" in verified.stdout, verified.stdout + verified.stderr
        records = int(verified.stdout.split("audit OK: ")[1].split()[0])
        assert records >= 10
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
