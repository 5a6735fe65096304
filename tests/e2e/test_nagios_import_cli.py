"""Moving off Nagios as a person does it: `opsroom catalog import nagios` (a real process), then
`opsroom catalog validate` on the draft, then the imported checks running in opsroom."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.e2e.harness import cli
from tests.factories import free_port
from tests.inprocess import booted

pytestmark = pytest.mark.e2e
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nagios"


def test_import_a_shop_then_validate_the_draft(tmp_path: Path) -> None:
    out = tmp_path / "draft"
    result = cli("catalog", "import", "nagios", str(FIXTURES), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert f"draft: 3 systems, 8 services, 11 checks in {out / 'nagios.yaml'}" in result.stdout
    assert "not translated: 30" in result.stdout
    assert f"{FIXTURES / 'commands.cfg'}:45: command 'check_dns_answer': needs a shell" in result.stdout
    listing = (out / "skipped.txt").read_text().splitlines()
    assert len(listing) == 30 and all(line.startswith(str(FIXTURES)) for line in listing)

    valid = cli("catalog", "validate", str(out))
    assert valid.returncode == 0, valid.stderr
    assert "catalog OK: 3 systems, 8 services, 11 checks" in valid.stdout

    again = cli("catalog", "import", "nagios", str(FIXTURES), "-o", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    forced = cli("catalog", "import", "nagios", str(FIXTURES), "-o", str(out), "--force")
    assert forced.returncode == 0, forced.stderr

    to_stdout = cli("catalog", "import", "nagios", *[str(p) for p in sorted(FIXTURES.glob("*.cfg"))])
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert len(yaml.safe_load(to_stdout.stdout)["checks"]) == 11
    assert "not translated: 30" in to_stdout.stderr


async def test_imported_checks_run_in_opsroom(tmp_path: Path) -> None:
    """A small shop on this machine: imported, validated, booted, its checks run and agree with Nagios."""
    async def page(_req: web.Request) -> web.Response:
        return web.Response(text="healthy")

    app = web.Application()
    app.router.add_get("/health", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    cfg = tmp_path / "local.cfg"
    cfg.write_text(textwrap.dedent(f"""
        define command {{
            command_name  check_http_url
            command_line  $USER1$/check_http -I $HOSTADDRESS$ -p $_HOSTPORT$ -u '$ARG1$'
        }}
        define command {{
            command_name  check_dummy
            command_line  $USER1$/check_dummy $ARG1$ "$ARG2$"
        }}
        define host {{
            host_name  app1
            address    127.0.0.1
            _PORT      {port}
        }}
        define service {{
            host_name            app1
            service_description  Health
            check_command        check_http_url!/health
            max_check_attempts   1
        }}
        define service {{
            host_name            app1
            service_description  Batch
            check_command        check_dummy!1!batch late
            max_check_attempts   1
        }}
    """))
    out = tmp_path / "draft"
    try:
        result = await asyncio.to_thread(cli, "catalog", "import", "nagios", str(cfg), "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert (await asyncio.to_thread(cli, "catalog", "validate", str(out))).returncode == 0
        async with booted(tmp_path, out) as (rt, _fake):
            mon = rt.monitor
            assert mon is not None
            await mon.run_check("health-app1")
            await mon.run_check("batch-app1")
            assert mon.status["health-app1"].state == "OK" and set(mon.last["health-app1"].perfdata) == \
                {"time", "size"}
            assert (mon.status["batch-app1"].state, mon.last["batch-app1"].output) == ("WARNING", "WARNING: batch late")
    finally:
        await runner.cleanup()
