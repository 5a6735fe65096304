"""The CLI as a person uses it: real subprocesses, real store."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory

from opsroom.store.lease import FileLease
from opsroom.store.migrate import alembic_config
from tests.e2e.harness import cli, start_server
from tests.factories import DEMO_CATALOG, free_port, small_catalog, write_catalog

pytestmark = pytest.mark.e2e
FIXTURES = Path(__file__).parent.parent / "fixtures"
NEXT_EXPAND, NEXT_CONTRACT = FIXTURES / "migrations_next", FIXTURES / "migrations_next_contract"

BROKEN = {
    "yaml syntax": ("checks:\n  - name: a\n    type http\n", r"catalog\.yaml:3:\d+: error: ", "hint:"),
    "unknown check type": (
        "services: []\nchecks:\n  - name: a\n    type: htp\n    url: http://x\n",
        r"catalog\.yaml:4:\d+: error: check 'a': unknown check type 'htp'", "did you mean 'http'"),
    "missing runbook": (
        "environments: [{name: e}]\nsystems: [{name: s, environment: e}]\nservices: [{name: v, system: s}]\n"
        "checks: [{name: c, type: tcp, service: v, host: h, port: 1}]\n"
        "rules:\n  - name: r\n    when: {check: c}\n    then: {runbook: strat-service}\n",
        r"catalog\.yaml:8:\d+: error: rule 'r' runs runbook 'strat-service', which is not in the catalog", "hint:"),
    "bad interval": (
        "environments: [{name: e}]\nsystems: [{name: s, environment: e}]\nservices: [{name: v, system: s}]\n"
        "checks:\n  - name: c\n    type: tcp\n    service: v\n    host: h\n    port: 1\n    interval: 2 parsecs\n",
        r"catalog\.yaml:10:\d+: error: .*2 parsecs", "30s"),
    "duplicate name": (
        "environments:\n  - name: e\n  - name: e\n", r"catalog\.yaml:3:\d+: error: .*duplicate|catalog\.yaml:3:\d+: "
        r"error: .*already", "catalog.yaml:2"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_catalog_validate_reports_file_line_and_hint(case: str, tmp_path: Path) -> None:
    text, where, hint = BROKEN[case]
    path = write_catalog(tmp_path / "cat", text)
    result = cli("catalog", "validate", str(path))
    assert result.returncode == 2, result.stdout
    assert re.search(where, result.stderr, re.IGNORECASE), result.stderr
    assert hint in result.stderr
    assert "Traceback" not in result.stderr


def test_catalog_validate_accepts_the_demo() -> None:
    result = cli("catalog", "validate", str(DEMO_CATALOG))
    assert result.returncode == 0, result.stderr
    assert "catalog OK" in result.stdout and "4 runbooks" in result.stdout


def test_users_tokens_and_audit_on_the_server_host(tmp_path: Path) -> None:
    catalog = small_catalog(tmp_path)
    common = ["--data", str(tmp_path / "data"), "--catalog", str(catalog)]
    created = cli("migrate", "--data", str(tmp_path / "data"))
    assert created.returncode == 0 and "new store in" in created.stdout, created.stderr
    made = cli("user", "add", "carol", "--role", "viewer", "--password-stdin", *common,
               stdin="a-long-enough-password\n")
    assert made.returncode == 0, made.stderr
    short = cli("user", "passwd", "carol", "--password-stdin", *common, stdin="short\n")
    assert short.returncode == 1 and "too short" in short.stderr
    bad_role = cli("user", "add", "dave", "--role", "superuser", *common)
    assert bad_role.returncode == 1 and "unknown role(s): superuser" in bad_role.stderr
    assert cli("user", "passwd", "carol", "--password-stdin", *common,
               stdin="another-long-password\n").returncode == 0
    token = cli("token", "create", "carol", *common).stdout.strip()
    assert token.startswith("opr_")
    listed = cli("user", "list", *common)
    assert "carol" in listed.stdout and "viewer" in listed.stdout
    again = cli("migrate", "--data", str(tmp_path / "data"))
    assert again.returncode == 0 and again.stdout.startswith("store in"), again.stderr

    ok = cli("audit", "verify", "--data", str(tmp_path / "data"))
    assert ok.returncode == 0 and "chain intact" in ok.stdout
    with sqlite3.connect(tmp_path / "data" / "opsroom.db") as db:
        db.execute("UPDATE audit_records SET actor = 'mallory' WHERE seq = 2")
    broken = cli("audit", "verify", "--data", str(tmp_path / "data"))
    assert broken.returncode == 1
    assert "audit BROKEN at record 2" in broken.stderr


def test_runbook_and_check_run_are_requests_to_the_server(tmp_path: Path) -> None:
    catalog = small_catalog(tmp_path)
    server = start_server(tmp_path, ["serve", "--catalog", str(catalog)])
    try:
        data = ["--data", str(server.data)]
        token = cli("token", "create", "you", *data).stdout.strip()
        viewer = cli("token", "create", "dev", *data).stdout.strip()
        remote = ["--server", server.base, "--token", token]
        ran = cli("runbook", "run", "count", "n=42", *remote)
        assert ran.returncode == 0, ran.stderr
        assert "42" in ran.stdout and "succeeded" in ran.stdout
        bad = cli("runbook", "run", "count", "n=4x2", *remote)
        assert bad.returncode == 2 and "does not match the pattern" in bad.stderr  # usage: a bad value
        asked = cli("runbook", "run", "deploy", "--no-wait", *remote)  # without it: waits for the approval
        assert asked.returncode == 0 and re.search(r"execution #\d+ awaits approval \(request #\d+\)", asked.stdout)
        started = cli("runbook", "run", "count", "n=7", "--no-wait", *remote)
        assert started.returncode == 0 and re.fullmatch(r"execution #\d+: running\n", started.stdout)
        assert cli("runbook", "run", "count", "n", *remote).returncode == 2  # not key=value

        checked = cli("check", "run", "svc-cmd", *remote)
        assert checked.returncode == 0, checked.stderr
        assert "svc-cmd: OK OK - fine" in checked.stdout
        # OPSROOM_URL instead of --server; OPSROOM_TOKEN instead of --token
        by_env = cli("check", "run", "svc-cmd", env={"OPSROOM_URL": server.base, "OPSROOM_TOKEN": token})
        assert by_env.returncode == 0, by_env.stderr

        answers = {
            "no token": (cli("check", "run", "svc-cmd", "--server", server.base), 2,
                         "this command acts as a user", "OPSROOM_TOKEN"),
            "wrong token": (cli("check", "run", "svc-cmd", "--server", server.base, "--token", "opr_wrong"), 3,
                            "invalid or revoked API token", "opsroom token create"),
            "forbidden": (cli("runbook", "run", "count", "n=1", "--server", server.base, "--token", viewer), 3,
                          "error: ", "hint: "),
            "unknown runbook": (cli("runbook", "run", "cuont", "n=1", *remote), 4,
                                "I don't know a runbook called 'cuont'", "did you mean"),
            "unknown check": (cli("check", "run", "nope", *remote), 4, "error: ", "hint: "),
            "no server": (cli("check", "run", "svc-cmd", "--server", f"http://127.0.0.1:{free_port()}",
                              "--token", token), 5, "cannot reach the opsroom server", "is `opsroom serve` running"),
            "not a url": (cli("check", "run", "svc-cmd", "--server", "ftp://x", "--token", token), 2,
                          "not an http:// or https:// address", "--server"),
            "bad url": (cli("check", "run", "svc-cmd", "--server", "http://[::1", "--token", token), 2,
                        "is not a usable server address", "--server"),
            "non-ascii token": (cli("check", "run", "svc-cmd", *remote[:2], "--token", "opr_é"), 2,
                                "the token holds characters", "opsroom token create"),
            "token with a newline": (cli("check", "run", "svc-cmd", *remote[:2], "--token", "opr_a\nb"), 2,
                                     "the token holds characters", "opsroom token create"),
        }
        for case, (result, code, message, hint) in answers.items():
            assert result.returncode == code, (case, result.stdout, result.stderr)
            assert message in result.stderr and hint in result.stderr, (case, result.stderr)
            assert "Traceback" not in result.stdout + result.stderr, case
            assert len(result.stderr.strip().splitlines()) == 2, (case, result.stderr)  # the error, its hint
    finally:
        server.stop()


def test_a_store_migrated_by_a_newer_opsroom_is_named_and_left_alone(tmp_path: Path) -> None:
    # A rollback of opsroom after an upgrade: the store is at a revision this version lacks.
    # Alembic's own answer is a traceback saying "Can't locate revision".
    data, catalog = tmp_path / "data", small_catalog(tmp_path)
    common = ["--data", str(data), "--catalog", str(catalog)]
    assert cli("migrate", "--data", str(data)).returncode == 0  # creates the store
    with sqlite3.connect(data / "opsroom.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    listed = cli("user", "list", *common)
    migrated = cli("migrate", "--data", str(data))
    served = cli("serve", *common, "--port", str(free_port()))
    for result, code in ((listed, 1), (migrated, 1), (served, 2)):
        assert result.returncode == code, result.stdout + result.stderr
        assert "the store's schema is at revision 0099_from_the_future" in result.stderr
        assert "a newer opsroom has migrated this store" in result.stderr and "hint: run that newer" in result.stderr
        assert "Traceback" not in result.stdout + result.stderr
    with sqlite3.connect(data / "opsroom.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0099_from_the_future",)]


def test_a_command_migrates_only_a_store_no_server_runs_on(tmp_path: Path) -> None:
    # A newer CLI beside an older server that still runs: a contract migration under it would
    # break it, so the command refuses until that server stops; an expand one is applied (the
    # rolling upgrade). The newer CLI is this code plus one more migration directory.
    data, catalog = tmp_path / "data", small_catalog(tmp_path)
    common = ["--data", str(data), "--catalog", str(catalog)]
    assert cli("migrate", "--data", str(data)).returncode == 0  # as this version leaves it
    held = FileLease(data / "opsroom.db.server-lock")
    asyncio.run(held.acquire())
    try:
        refused = next_cli(NEXT_CONTRACT, "user", "list", *common)
        expanded = next_cli(NEXT_EXPAND, "migrate", "--data", str(data))
    finally:
        asyncio.run(held.release())
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "the store needs a contract migration for opsroom" in refused.stderr and "next_contract" in refused.stderr
    assert "another opsroom server is already running against this store" in refused.stderr
    assert "hint: a contract migration changes what older servers rely on" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert expanded.returncode == 0 and "at schema revision next_expand" in expanded.stdout, expanded.stderr
    with sqlite3.connect(data / "opsroom.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("next_expand",)]
        assert db.execute("SELECT kind FROM schema_compat WHERE revision = 'next_expand'").fetchall() == [("expand",)]
    assert cli("user", "list", *common).returncode == 0  # this version serves the expanded store
    # With no server, the whole store is migrated, as before.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    command.upgrade(alembic_config(f"sqlite:///{fresh / 'opsroom.db'}"), "0001")  # as opsroom 0001 left it
    assert cli("user", "list", "--data", str(fresh), "--catalog", str(catalog)).returncode == 0
    with sqlite3.connect(fresh / "opsroom.db") as db:
        head = ScriptDirectory.from_config(alembic_config(str(fresh / "opsroom.db"))).get_current_head()
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)] != [("0001",)]


def next_cli(versions: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The next version of opsroom: this code plus the migrations in `versions`."""
    return subprocess.run([sys.executable, str(FIXTURES / "next_opsroom.py"), str(versions), *args],
                          capture_output=True, text=True, timeout=60)
