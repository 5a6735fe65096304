"""`target: ssh` runbooks against a real OpenSSH sshd on loopback (key-only): issue 12's acceptance."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from opsroom.catalog.errors import CatalogError
from opsroom.catalog.loader import load_catalog
from opsroom.runtime import Runtime
from tests import inprocess
from tests.factories import DEMO_CATALOG, demo_env
from tests.ssh import sshd
from tests.ssh.helpers import PY, catalog, fingerprint, gone, pgrep, run, ssh_runbook

ARGV_TO_FILE = "import json,sys; open(sys.argv[1],'w').write(json.dumps(sys.argv[2:]))"


# --- the demo's start-service runbook on another host ------------------------


@pytest.fixture
async def demo_over_ssh(tmp_path: Path, server: sshd.Sshd,
                        monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Runtime, Path]]:
    """The packaged demo catalog with start-service retargeted to the sshd's host (`target: ssh`)."""
    data = tmp_path / "data"
    for key, value in demo_env(data).items():
        monkeypatch.setenv(key, value)
    cat = shutil.copytree(DEMO_CATALOG, tmp_path / "catalog")
    books = yaml.safe_load((cat / "runbooks.yaml").read_text())
    for book in books["runbooks"]:
        if book["name"] == "start-service":
            # Same steps, another place: its command over SSH, its check step here. No approval:
            # prod's approval flow is tested elsewhere; this is about where the command runs.
            book.update(target="ssh", hosts=["app-1"], approval="none")
    (cat / "runbooks.yaml").write_text(yaml.safe_dump(books, sort_keys=False))
    (cat / "hosts.yaml").write_text(yaml.safe_dump({"hosts": [server.host("app-1", environment="prod")]}))
    try:
        async with inprocess.booted(tmp_path, cat) as (rt, _fake):
            yield rt, data
    finally:
        pidfile = data / "demo" / "service-b.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text())
            if "opsroom.demo.service" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGTERM)


async def test_demo_start_service_recovers_a_service_on_another_host(
        demo_over_ssh: tuple[Runtime, Path]) -> None:
    rt, data = demo_over_ssh
    assert rt.monitor is not None
    assert (await rt.monitor.run_check("service-b-http")).state == "CRITICAL"  # down before
    done = await run(rt, "start-service", service="service-b")
    assert done.status == "succeeded", (done.error, done.output)
    assert "-m opsroom.demo.ctl" in done.output and "started service-b" in done.output
    assert "check service-b-http: OK" in done.output
    assert (await rt.monitor.run_check("service-b-http")).state == "OK"
    # It went through the sshd: one connection was opened by the ssh target.
    assert rt.executor is not None
    assert rt.executor._targets["ssh"].pool.connects == 1
    pid = int((data / "demo" / "service-b.pid").read_text())
    assert "opsroom.demo.service" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()


# --- one runtime with a few ssh runbooks ----------------------------------------


@pytest.fixture
async def rt(tmp_path: Path, server: sshd.Sshd) -> AsyncIterator[Runtime]:
    hosts = [server.host("box"), *(server.host(f"h{i}", groups=["web"]) for i in range(1, 6))]
    fan_log = tmp_path / "fan.log"
    books = [
        ssh_runbook("argv", [{"command": [PY, "-c", ARGV_TO_FILE, str(tmp_path / "argv.json"), "{{ params.text }}"]}],
                    parameters={"text": {"type": "string", "allow_options": True}}),
        ssh_runbook("hang", [{"command": ["sh", "-c", "echo $$ > \"$1\"; sleep 417.25 & sleep 418.25; echo never",
                                          "sh", str(tmp_path / "hang.pid")], "timeout": "1s"}]),
        ssh_runbook("where", [{"command": ["sh", "-c", "echo host=$OPSROOM_HOST user=$(id -un) pwd=$(pwd); env | sort"],
                               "env": {"GREETING": "a b;c"},
                               "cwd": str(tmp_path)}], hosts=["{{ params.host }}"],
                    parameters={"host": {"type": "string"}}),
        {"name": "fan", "approval": "none", "target": "ssh", "group": "web", "max_failures": 1,
         "steps": [{"command": ["sh", "-c", 'h=$OPSROOM_HOST; echo "$h" >> "$1"; test "$h" != h2 && test "$h" != h3',
                                "sh", str(fan_log)]}]},
        {"name": "fan-parallel", "approval": "none", "target": "ssh", "group": "web", "parallel": 5,
         "steps": [{"command": ["sh", "-c", "echo hello from $OPSROOM_HOST; echo second line"]}]},
        ssh_runbook("fails", [{"command": ["sh", "-c", "echo oops; exit 3"]}]),
        ssh_runbook("missing", [{"command": ["/nonexistent/tool"]}]),
    ]
    async with inprocess.booted(tmp_path, catalog(tmp_path, server, hosts=hosts, runbooks_=books)) as (r, _f):
        yield r


async def test_unknown_host_key_is_refused_showing_both_fingerprints(tmp_path: Path, server: sshd.Sshd) -> None:
    _, other = sshd.keygen(tmp_path / "other_host_key")
    host = server.host("box", host_key=other)
    cat = catalog(tmp_path, server, hosts=[host], runbooks_=[ssh_runbook("noop", [{"command": ["true"]}])])
    async with inprocess.booted(tmp_path, cat) as (r, _f):
        done = await run(r, "noop")
    assert done.status == "failed"
    assert done.error is not None
    assert fingerprint(other) in done.error  # what the catalog pins
    assert fingerprint(server.host_key) in done.error  # what the server presented
    assert "refused" in done.error


async def test_pinned_fingerprint_is_accepted(tmp_path: Path, server: sshd.Sshd) -> None:
    host = server.host("box", host_key=fingerprint(server.host_key))
    cat = catalog(tmp_path, server, hosts=[host], runbooks_=[ssh_runbook("noop", [{"command": ["true"]}])])
    async with inprocess.booted(tmp_path, cat) as (r, _f):
        done = await run(r, "noop")
    assert done.status == "succeeded", done.error


async def test_step_timeout_leaves_no_remote_process(rt: Runtime, tmp_path: Path) -> None:
    done = await run(rt, "hang")
    assert done.status == "timed_out", (done.error, done.output)
    assert (tmp_path / "hang.pid").exists()  # it did start remotely
    assert await gone("sleep 41[78].25"), pgrep("sleep 41[78].25")
    assert "never" not in done.output.splitlines()


async def test_a_parameter_stays_one_argument(rt: Runtime, tmp_path: Path) -> None:
    canary = tmp_path / "x"
    canary.mkdir()
    value = f"b; rm -rf {canary}"
    done = await run(rt, "argv", text=value)
    assert done.status == "succeeded", done.error
    assert yaml.safe_load((tmp_path / "argv.json").read_text()) == [value]
    assert canary.is_dir()


async def test_fan_out_stops_after_more_than_max_failures(rt: Runtime, tmp_path: Path) -> None:
    done = await run(rt, "fan")
    assert done.status == "failed"
    # parallel 1: one host after another, in the catalog's order; h2 fails (1, allowed), h3 fails (2 > 1).
    assert (tmp_path / "fan.log").read_text().split() == ["h1", "h2", "h3"]
    assert done.error is not None and "not started: h4, h5" in done.error
    assert "2 of 5 hosts failed" in done.error


async def test_fan_out_in_parallel_prefixes_each_line_with_its_host(rt: Runtime) -> None:
    done = await run(rt, "fan-parallel")
    assert done.status == "succeeded", done.error
    lines = done.output.splitlines()
    for i in range(1, 6):
        assert f"[h{i}] hello from h{i}" in lines
        assert f"[h{i}] second line" in lines
    assert all(line.startswith("[h") for line in lines), lines
    assert rt.executor is not None
    assert rt.executor._targets["ssh"].pool.connects == 5


async def test_templated_host_env_cwd_and_a_minimal_environment(rt: Runtime, tmp_path: Path,
                                                                 server: sshd.Sshd) -> None:
    done = await run(rt, "where", host="h3")
    assert done.status == "succeeded", done.error
    assert f"host=h3 user={server.user} pwd={tmp_path}" in done.output
    assert "GREETING=a b;c" in done.output
    names = {line.split("=", 1)[0] for line in done.output.splitlines()[2:] if "=" in line}
    assert names <= {"PATH", "LANG", "LC_ALL", "HOME", "GREETING", "OPSROOM_HOST", "PWD", "SHLVL", "_"}, names
    unknown = await run(rt, "where", host="nope")
    assert unknown.status == "failed" and "no host called 'nope'" in (unknown.error or "")


async def test_exit_codes_and_missing_programs_fail_the_step(rt: Runtime) -> None:
    fails = await run(rt, "fails")
    assert fails.status == "failed" and fails.error == "exit code 3" and "oops" in fails.output
    missing = await run(rt, "missing")
    assert missing.status == "failed" and "exit code 127" in (missing.error or "")


async def test_connection_is_reused_across_steps_and_runs(rt: Runtime) -> None:
    assert rt.executor is not None
    for _ in range(3):
        assert (await run(rt, "fails")).status == "failed"
    assert rt.executor._targets["ssh"].pool.connects == 1


async def test_runbooks_and_via_checks_share_one_connection(tmp_path: Path, server: sshd.Sshd) -> None:
    checks = [{"name": "remote-true", "type": "command", "service": "svc", "via": "box", "argv": ["true"]}]
    cat = catalog(tmp_path, server, checks=checks, runbooks_=[ssh_runbook("noop", [{"command": ["true"]}])])
    async with inprocess.booted(tmp_path, cat) as (r, _f):
        assert r.monitor is not None and r.executor is not None
        assert (await r.monitor.run_check("remote-true")).state == "OK"
        assert (await run(r, "noop")).status == "succeeded"
        assert (await r.monitor.run_check("remote-true")).state == "OK"
        assert r.executor._targets["ssh"].pool.connects == 1


def test_key_file_readable_by_others_is_refused_at_load(tmp_path: Path, server: sshd.Sshd) -> None:
    key = tmp_path / "loose_key"
    shutil.copy(server.client_key, key)
    key.chmod(0o644)
    cat = catalog(tmp_path, server, hosts=[server.host("box", key_file=str(key))])
    with pytest.raises(CatalogError) as err:
        load_catalog(cat)
    text = str(err.value)
    assert "catalog.yaml:" in text and "mode 0644" in text and f"chmod 600 {key}" in text


async def test_key_file_loosened_after_load_is_refused_at_connect(tmp_path: Path, server: sshd.Sshd) -> None:
    key = tmp_path / "key"
    shutil.copy(server.client_key, key)
    key.chmod(0o600)
    cat = catalog(tmp_path, server, hosts=[server.host("box", key_file=str(key))],
                  runbooks_=[ssh_runbook("noop", [{"command": ["true"]}])])
    async with inprocess.booted(tmp_path, cat) as (r, _f):
        key.chmod(0o640)
        done = await run(r, "noop")
    assert done.status == "failed" and "mode 0640" in (done.error or "")
