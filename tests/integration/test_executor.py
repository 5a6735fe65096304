"""The executor on a running opsroom: real subprocesses, timeouts, HTTP and check steps, masking, locks."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.chat.fake import FakeAdapter
from opsroom.errors import Conflict
from opsroom.events import ExecutionOutput
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from tests import inprocess
from tests.factories import free_port, write_catalog

PY = sys.executable
SECRET = "s3cr3t-T0ken-xyz"

# Writes its pid and a grandchild's pid, then sleeps: a hung command with a child of its own.
HANG = ("import subprocess,sys,time,os; c=subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']);"
        "open(sys.argv[1],'w').write(f'{os.getpid()} {c.pid}'); print('started', flush=True); time.sleep(60)")


def _cmd(code: str, *args: str, **step: Any) -> dict[str, Any]:
    return {"command": [PY, "-c", code, *args], **step}


def _catalog(tmp: Path) -> Path:
    flag = tmp / "flag"
    return write_catalog(tmp / "catalog", {
        "environments": [{"name": "test"}],
        "systems": [{"name": "sys", "title": "Sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "checks": [{"name": "flag", "type": "command", "service": "svc", "max_attempts": 1,
                    "argv": [PY, "-c", "import os,sys; ok=os.path.exists(sys.argv[1]);"
                             "print('OK - flag' if ok else 'CRITICAL - no flag'); sys.exit(0 if ok else 2)",
                             str(flag)]}],
        "runbooks": [
            {"name": "hang", "approval": "none", "steps": [_cmd(HANG, str(tmp / "pids"), timeout="700ms")]},
            {"name": "slow", "approval": "none", "timeout": "1s", "steps": [
                _cmd("print('one', flush=True)"),
                _cmd(HANG, str(tmp / "pids"), timeout="30s"),
                _cmd("print('never')")]},
            {"name": "exit7", "approval": "none", "steps": [_cmd("import sys; print('bad'); sys.exit(7)"),
                                                            _cmd("print('never')")]},
            {"name": "keep-going", "approval": "none", "steps": [
                _cmd("import sys; sys.exit(1)", continue_on_error=True, name="may fail"),
                {"command": ["/nonexistent/tool", "x"], "continue_on_error": True},
                _cmd("print('second step ran')")]},
            {"name": "missing", "approval": "none", "steps": [{"command": ["/nonexistent/tool", "--help"]}]},
            {"name": "nul", "approval": "none", "steps": [{"command": [PY, "-c", "print(1)", "a\x00b"]}]},
            {"name": "call", "approval": "none", "parameters": {"url": {"type": "string"}},
             "steps": [{"http": {"url": "{{ params.url }}", "method": "POST", "body": "hello"},
                        "timeout": "3s"}]},
            {"name": "wait-flag", "approval": "none",
             "steps": [{"check": "flag", "deadline": "4s", "poll": "200ms"}]},
            {"name": "wait-flag-short", "approval": "none",
             "steps": [{"check": "flag", "deadline": "800ms", "poll": "200ms"}]},
            {"name": "secret", "approval": "none",
             "parameters": {"token": {"type": "string", "secret": True}, "port": {"type": "string"}},
             "steps": [
                 _cmd("import sys; print('using', sys.argv[1]); print('tail', sys.argv[1][-6:])",
                      "{{ params.token }}", continue_on_error=True),
                 {"http": {"url": "http://127.0.0.1:{{ params.port }}/x?token={{ params.token }}"},
                  "timeout": "2s"}]},
            {"name": "chatty", "approval": "none", "steps": [
                _cmd("import time\nfor i in range(200):\n    print('line', i, flush=True); time.sleep(0.0095)")]},
            {"name": "long-line", "approval": "none", "steps": [
                _cmd("import sys; sys.stdout.write('x' * 300000); sys.stdout.write('\\nafter the long line\\n')")]},
            {"name": "hold", "approval": "none", "parameters": {"n": {"type": "string"}, "m": {"type": "string",
                                                                                              "default": "0"}},
             "steps": [_cmd("import os,sys,time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)",
                            str(tmp / "release"))]},
        ],
        "rooms": [{"name": "ops"}],
        "users": [{"name": "you", "roles": ["operator"]}],
    })


@pytest.fixture
async def booted(tmp_path: Path) -> AsyncIterator[tuple[Runtime, FakeAdapter]]:
    async with inprocess.booted(tmp_path, _catalog(tmp_path)) as pair:
        yield pair


async def _run(rt: Runtime, runbook: str, room: str | None = "ops", **params: str) -> ExecutionRow:
    row = await runbooks.request_run(rt, actor=SYSTEM, runbook=runbook, params=params, room=room)
    assert rt.executor is not None
    await rt.executor.wait(row.id)
    await rt.bus.drain()
    async with rt.read() as s:
        done = await s.get(ExecutionRow, row.id)
    assert done is not None
    return done


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's reaper may be slow in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _gone(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_step_timeout_kills_the_process_group(booted: tuple[Runtime, FakeAdapter], tmp_path: Path) -> None:
    rt, _fake = booted
    started = time.monotonic()
    row = await _run(rt, "hang")
    assert time.monotonic() - started < 3
    assert row.status == "timed_out"
    assert row.error == "timed out after 0.7s"
    assert "started" in row.output and "timed_out: timed out after 0.7s" in row.output
    child, grandchild = map(int, (tmp_path / "pids").read_text().split())
    assert await _gone(child), "the step's process survived its timeout"
    assert await _gone(grandchild), "the step's child process survived: the group was not killed"


async def test_runbook_timeout_stops_the_running_step(booted: tuple[Runtime, FakeAdapter], tmp_path: Path) -> None:
    rt, _fake = booted
    started = time.monotonic()
    row = await _run(rt, "slow")
    assert 0.9 < time.monotonic() - started < 3
    assert row.status == "timed_out" and row.error == "runbook timed out after 1s"
    assert "one" in row.output and "never" not in row.output
    child, grandchild = map(int, (tmp_path / "pids").read_text().split())
    assert await _gone(child) and await _gone(grandchild)


async def test_nonzero_exit_fails_and_stops(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = booted
    row = await _run(rt, "exit7")
    assert row.status == "failed" and row.error == "exit code 7"
    assert "bad" in row.output and "never" not in row.output
    msg = await fake.wait_for(lambda m: f"execution #{row.id} failed" in m.text, timeout=3)
    assert msg.text.startswith("runbook exit7 failed (") and msg.text.endswith(": exit code 7)")
    records = await audit.list_records(rt, actor=SYSTEM, action="execution.finish")
    assert [(r.target, r.outcome) for r in records] == [(f"execution:{row.id}", "failed")]


async def test_continue_on_error_keeps_going(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, _fake = booted
    row = await _run(rt, "keep-going")
    assert row.status == "succeeded" and row.error is None
    assert "step 1 (may fail) failed: exit code 1" in row.output
    assert "step 2 (/nonexistent/tool x) failed: cannot start" in row.output
    assert "second step ran" in row.output


async def test_missing_executable_cannot_start(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, _fake = booted
    row = await _run(rt, "missing")
    assert row.status == "failed"
    assert row.error == "cannot start '/nonexistent/tool': No such file or directory"


async def test_a_nul_in_an_argument_fails_the_step_clearly(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, _fake = booted
    row = await _run(rt, "nul")
    assert row.status == "failed"
    assert row.error == f"cannot start {PY!r}: an argument holds a NUL byte"  # not "internal error"


async def test_http_step(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, _fake = booted
    seen: list[tuple[str, str]] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append((request.method, await request.text()))
        return web.Response(text="all good")

    async def boom(request: web.Request) -> web.Response:
        return web.Response(status=500, text="kaput")

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/boom", boom)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        row = await _run(rt, "call", url=f"http://127.0.0.1:{port}/ok")
        assert row.status == "succeeded", row.error
        assert seen == [("POST", "hello")]
        assert f"POST http://127.0.0.1:{port}/ok -> HTTP 200" in row.output and "all good" in row.output
        row = await _run(rt, "call", url=f"http://127.0.0.1:{port}/boom")
        assert row.status == "failed" and row.error == "HTTP 500 (expected 200, 201, 202, 204)"
        assert "kaput" in row.output
    finally:
        await runner.cleanup()
    row = await _run(rt, "call", url=f"http://127.0.0.1:{port}/ok")  # nobody listens any more
    assert row.status == "failed" and row.error is not None
    assert row.error.startswith(f"POST http://127.0.0.1:{port}/ok failed:")


async def test_check_step_waits_until_ok(booted: tuple[Runtime, FakeAdapter], tmp_path: Path) -> None:
    rt, _fake = booted
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, (tmp_path / "flag").touch)
    started = time.monotonic()
    row = await _run(rt, "wait-flag")
    assert row.status == "succeeded", row.error
    assert time.monotonic() - started >= 0.5
    assert "check flag: OK (OK - flag)" in row.output
    assert rt.monitor is not None and rt.monitor.status["flag"].state == "OK"  # the runs were real check results


async def test_check_step_gives_up_at_its_deadline(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, _fake = booted
    row = await _run(rt, "wait-flag-short")
    assert row.status == "failed"
    assert row.error == "check flag still CRITICAL after 0.8s: CRITICAL - no flag"


async def test_secret_parameters_are_masked_everywhere(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = booted
    row = await _run(rt, "secret", token=SECRET, port=str(free_port()))
    assert row.status == "failed"  # the HTTP step has nobody to talk to
    assert "using ****" in row.output
    assert SECRET not in row.output
    assert row.error is not None and "token=****" in row.error
    assert SECRET not in row.error
    await fake.wait_for(lambda m: f"execution #{row.id} failed" in m.text, timeout=3)
    streamed = [e.text for e in rt.bus.history if isinstance(e, ExecutionOutput)]
    assert streamed and not any(SECRET in t for t in streamed)
    assert not any(SECRET in m.text for m in fake.sent)
    records = await audit.list_records(rt, actor=SYSTEM, limit=100)
    assert not any(SECRET in str(r.details) for r in records)


async def test_output_streaming_is_rate_limited(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, _fake = booted
    started = time.monotonic()
    row = await _run(rt, "chatty")
    assert time.monotonic() - started >= 1.5
    assert row.status == "succeeded"
    assert all(f"line {i}\n" in row.output for i in range(200))
    chunks = [e for e in rt.bus.history if isinstance(e, ExecutionOutput) and e.execution_id == row.id]
    assert 2 <= len(chunks) <= 4, [len(c.text) for c in chunks]
    assert "line 199" in chunks[-1].text  # the last chunk is flushed at the end


async def test_a_very_long_output_line_does_not_break_the_run(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, _fake = booted
    row = await _run(rt, "long-line")
    assert row.status == "succeeded", row.error
    assert "after the long line" in row.output


async def test_identical_request_while_running_is_refused(booted: tuple[Runtime, FakeAdapter],
                                                          tmp_path: Path) -> None:
    rt, fake = booted
    assert rt.executor is not None
    first = await runbooks.request_run(rt, actor=SYSTEM, runbook="hold", params={"n": "1"})
    with pytest.raises(Conflict) as refused:
        await runbooks.request_run(rt, actor=SYSTEM, runbook="hold", params={"n": "1"})
    assert f"already in progress as execution #{first.id}" in refused.value.message
    # The same through chat, in the person's words.
    before = len(fake.sent)
    await fake.say("ops", "you", "run hold n=1")
    reply = await fake.wait_for(lambda m: m.kind == "bot" and m in fake.sent[before:], timeout=3)
    assert f"is already in progress as execution #{first.id}" in reply.text
    # Other parameters are another lock: that run goes ahead.
    other = await runbooks.request_run(rt, actor=SYSTEM, runbook="hold", params={"n": "2"})
    assert other.status == "running"  # no approval needed: stored running by the process that runs it
    assert runbooks.lock_key("hold", {"n": "1", "m": "0"}) == runbooks.lock_key("hold", {"m": "0", "n": "1"})
    assert len({first.lock_key, other.lock_key, runbooks.lock_key("hold-x", {"n": "1", "m": "0"})}) == 3
    (tmp_path / "release").touch()
    await rt.executor.wait(first.id)
    await rt.executor.wait(other.id)
    async with rt.read() as s:
        statuses = [(await s.get(ExecutionRow, i)).status for i in (first.id, other.id)]  # type: ignore[union-attr]
    assert statuses == ["succeeded", "succeeded"]
    # Once it finished, the same request may run again.
    again = await runbooks.request_run(rt, actor=SYSTEM, runbook="hold", params={"n": "1"})
    await rt.executor.wait(again.id)
    async with rt.read() as s:
        assert (await s.get(ExecutionRow, again.id)).status == "succeeded"  # type: ignore[union-attr]


async def test_secret_parameter_never_reaches_the_room_through_chat(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = booted
    await fake.say("ops", "you", f"run secret token={SECRET} port={free_port()}")
    await fake.wait_for(lambda m: "failed" in m.text, timeout=3)
    async with rt.read() as s:
        row = await s.get(ExecutionRow, 1)
    assert row is not None and SECRET not in row.summary
    assert not [m.text for m in fake.sent if SECRET in m.text]
