"""Acceptance 6 of issue 14: two versions side by side across an expand migration keep serving.

Version N is this code; version N+1 is this code plus one more migration (a nullable column and
a table, tests/fixtures/migrations_next), run through tests/fixtures/next_opsroom.py. On a real
PostgreSQL: N serves (checks every second, audited runbook runs over its API); N+1's
`opsroom migrate` expands the store under it; N keeps serving, storing check results and
running audited actions; N+1's commands work on the same store beside it, and N restarts on
the expanded store.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.harness import cli, start_server
from tests.e2e.test_backup_cli import busy_server

pytestmark = pytest.mark.e2e
FIXTURES = Path(__file__).parent.parent / "fixtures"
NEXT = FIXTURES / "migrations_next"


def next_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`opsroom ARGS` as version N+1."""
    return subprocess.run([sys.executable, str(FIXTURES / "next_opsroom.py"), str(NEXT), *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def sql(url: str, query: str, *args: Any) -> Any:
    async def one() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(one())


def _results(url: str) -> int:
    return int(sql(url, "SELECT count(*) FROM check_results"))


def test_a_server_of_version_n_keeps_serving_across_the_expand_migration_of_n_plus_1(
        tmp_path: Path, pg_own_url: str) -> None:
    env = {"OPSROOM_DATABASE_URL": pg_own_url}
    with busy_server(tmp_path, env) as (_data, load):
        head = sql(pg_own_url, "SELECT version_num FROM alembic_version")
        migrated = next_cli("migrate", env=env)  # N+1's migrate, under N serving
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        assert "at schema revision next_expand" in migrated.stdout
        assert sql(pg_own_url, "SELECT version_num FROM alembic_version") == "next_expand" != head
        assert sql(pg_own_url, "SELECT kind FROM schema_compat WHERE revision = 'next_expand'") == "expand"
        assert sql(pg_own_url, "SELECT count(*) FROM information_schema.columns "
                               "WHERE table_name = 'users' AND column_name = 'nickname'") == 1

        # N keeps serving: its API answers, its audited runs go on, its checks run and are stored.
        audited = "SELECT count(*) FROM audit_records WHERE action = 'runbook.run'"
        results, runs, records = _results(pg_own_url), len(load.runs), sql(pg_own_url, audited)
        load.until(runs + 15)
        deadline = time.monotonic() + 20
        while _results(pg_own_url) < results + 6:  # three checks a second
            assert time.monotonic() < deadline, "N stopped storing check results after the migration"
            time.sleep(0.2)
        assert sql(pg_own_url, audited) >= records + 15

        # N+1's code works on the store beside N: users, tokens, the audit chain, its new parts.
        added = next_cli("user", "add", "newbie", "--role", "viewer", env=env)
        assert added.returncode == 0, added.stderr
        token = next_cli("token", "create", "newbie", env=env)
        assert token.returncode == 0 and token.stdout.startswith("opr_"), token.stderr
        sql(pg_own_url, "UPDATE users SET nickname = 'nb' WHERE name = 'newbie'")
        sql(pg_own_url, "INSERT INTO next_notes (user_id, text) SELECT id, 'hello from N+1' FROM users "
                        "WHERE name = 'newbie'")
        with httpx.Client(base_url=load.base + "/api/v1", timeout=10,
                          headers={"Authorization": f"Bearer {token.stdout.strip()}"}) as api:
            assert api.get("/checks").status_code == 200  # N accepts what N+1 made
        verified = next_cli("audit", "verify", env=env)
        assert verified.returncode == 0 and "chain intact" in verified.stdout, verified.stderr

        # N's own commands serve the expanded store too (they used to refuse any newer schema).
        listed = cli("user", "list", env=env)
        assert listed.returncode == 0 and "newbie" in listed.stdout, listed.stderr
        again = cli("migrate", env=env)
        assert again.returncode == 0 and "at schema revision next_expand" in again.stdout, again.stderr
        load.until(len(load.runs) + 5)

    # A node of version N that restarts during the rolling upgrade comes back on the expanded store.
    restarted = start_server(tmp_path, ["serve", "--catalog", str(tmp_path / "catalog")], env_extra=env)
    try:
        assert httpx.get(f"{restarted.base}/healthz", timeout=5).status_code == 200
    finally:
        restarted.stop()
    assert sql(pg_own_url, "SELECT version_num FROM alembic_version") == "next_expand"
    assert cli("audit", "verify", env=env).returncode == 0
