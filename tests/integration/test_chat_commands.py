"""Chat commands through the fake adapter, driving the real hub, service layer and store."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.chat.base import Message
from opsroom.chat.fake import FakeAdapter
from opsroom.chat.phrases import PHRASES
from opsroom.runbooks import service as runbooks
from opsroom.runtime import Runtime
from tests.factories import DEMO_CATALOG, demo_env
from tests.inprocess import ask as _ask
from tests.inprocess import booted


async def _executions(rt: Runtime) -> list[object]:
    return list(await runbooks.list_executions(rt, actor=SYSTEM))


async def test_unknown_command_suggests(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    reply = await _ask(fake, "you", "strat svc")
    assert ("I don't understand" in reply and "start" not in reply) or "did you mean" in reply
    assert "did you mean" in reply
    assert await _executions(rt) == []


async def test_unknown_service(running: tuple[Runtime, FakeAdapter]) -> None:
    _rt, fake = running
    reply = await _ask(fake, "you", "is svx running?")
    assert "I don't know a service called 'svx'" in reply
    assert "did you mean 'svc'" in reply


async def test_missing_parameter(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    reply = await _ask(fake, "you", "run echo-args")
    assert "missing parameter 'text'" in reply and "usage: run echo-args text=<string>" in reply
    assert await _executions(rt) == []


async def test_a_command_missing_its_name_lists_the_names_it_takes(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    assert await _ask(fake, "you", "health") == "missing system: write `health {system}` — systems: sys"
    assert await _ask(fake, "you", "is") == "missing service: write `is {service} running` — services: svc"
    assert await _ask(fake, "you", "approve") == "missing id: write `approve {id}`"
    assert await _executions(rt) == []


async def test_parameter_failing_its_pattern(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    reply = await _ask(fake, "you", "run count n=12a")
    assert "does not match the pattern [0-9]{1,3}" in reply and "nothing was run" in reply
    assert await _executions(rt) == []


async def test_forgiving_names(running: tuple[Runtime, FakeAdapter]) -> None:
    _rt, fake = running
    for spelling in ("is SVC running", "is Svc running?", "is s-v-c running"):
        reply = await _ask(fake, "dev", spelling)
        assert reply.startswith("svc is running"), reply


async def test_viewer_cannot_run_and_nothing_runs(running: tuple[Runtime, FakeAdapter], tmp_path: Path) -> None:
    rt, fake = running
    reply = await _ask(fake, "dev", "echo hello")
    assert "dev may not run runbooks" in reply
    assert await _executions(rt) == []
    assert not (tmp_path / "argv.json").exists()


async def test_injection_is_one_argv_element(running: tuple[Runtime, FakeAdapter], tmp_path: Path) -> None:
    rt, fake = running
    victim = tmp_path / "x"
    victim.mkdir()
    (victim / "keep").write_text("still here")
    payload = f"b; rm -rf {victim}"
    await _ask(fake, "you", f"echo {payload}")
    rows = await _executions(rt)
    assert len(rows) == 1
    assert rt.executor is not None
    await rt.executor.wait(rows[0].id)  # type: ignore[attr-defined]
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv == [payload]
    assert (victim / "keep").read_text() == "still here"


async def test_protected_run_needs_approval_and_requester_cannot_approve(
        running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    await fake.join("ops", "boss")
    await _ask(fake, "you", "help")
    before = len(fake.sent)
    await fake.say("ops", "you", "run deploy")
    msg = await fake.wait_for(lambda m: "needs approval" in m.text)
    assert "deploy" in msg.text and "PROD" in msg.text and "asking boss" in msg.text
    request = int(msg.text.rsplit("#", 1)[1].rstrip("."))
    reply = await _ask(fake, "you", f"approve {request}")
    assert "you may not approve" in reply  # operator lacks the permission outright
    reply = await _ask(fake, "dev", f"approve {request}")
    assert "dev may not approve" in reply
    await fake.say("ops", "boss", f"approve {request}")
    await fake.wait_for(lambda m: m.text.startswith("approved by boss"))
    done: Message = await fake.wait_for(lambda m: "succeeded" in m.text)
    assert "deploy" in done.text
    assert len(fake.sent) > before
    records = await audit.list_records(rt, actor=SYSTEM, limit=200)
    refused = [r for r in records if r.action == "approval.approve" and r.outcome == "refused"]
    assert {r.actor for r in refused} == {"you", "dev"}
    assert any(r.action == "approval.approve" and r.outcome == "approved" and r.actor == "boss"
               and r.door == "chat" for r in records)
    assert (await audit.verify(rt)).ok


async def test_status_lists_open_requests_and_writes_one_record_that_counts_them(
        running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    await fake.say("ops", "you", "run deploy")
    msg = await fake.wait_for(lambda m: "needs approval" in m.text)
    request = int(msg.text.rsplit("#", 1)[1].rstrip("."))
    before = {r.seq for r in await audit.list_records(rt, actor=SYSTEM, limit=500)}
    reply = await _ask(fake, "dev", "status")
    assert f"request #{request}:" in reply and "by you" in reply
    new = [r for r in await audit.list_records(rt, actor=SYSTEM, limit=500) if r.seq not in before]
    # The view and its record in one hop: one record, naming what was shown.
    mine = [r for r in new if r.actor == "dev"]
    assert [(r.action, r.outcome, r.details) for r in mine] == [("status", "ok", {"open_requests": 1})]
    assert (await audit.verify(rt)).ok


async def test_requester_with_approver_role_cannot_approve_own(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    await fake.say("ops", "lead", "run deploy")
    msg = await fake.wait_for(lambda m: "needs approval" in m.text)
    request = int(msg.text.rsplit("#", 1)[1].rstrip("."))
    assert "asking boss" in msg.text and "lead" not in msg.text.split("asking", 1)[1]
    reply = await _ask(fake, "lead", f"approve {request}")
    assert "nobody approves their own request" in reply
    rows = await _executions(rt)
    assert [r.status for r in rows] == ["awaiting_approval"]  # type: ignore[attr-defined]


async def test_deny_needs_reason_and_decides(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    await fake.say("ops", "you", "run deploy")
    msg = await fake.wait_for(lambda m: "needs approval" in m.text)
    request = int(msg.text.rsplit("#", 1)[1].rstrip("."))
    assert "needs a reason" in await _ask(fake, "boss", f"deny {request}")
    await fake.say("ops", "boss", f"deny {request} not during business hours")
    denied = await fake.wait_for(lambda m: "denied by boss" in m.text)
    assert "not during business hours" in denied.text and "Nothing was run" in denied.text
    assert [r.status for r in await _executions(rt)] == ["denied"]  # type: ignore[attr-defined]
    assert "already denied" in await _ask(fake, "boss", f"approve {request}")


async def test_a_typo_of_a_reading_command_suggests_it_first(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    reply = await _ask(fake, "you", "helth sys")
    assert reply.split("did you mean ", 1)[1].startswith("`health {system}`"), reply
    reply = await _ask(fake, "you", "ech hello")  # a change: offered, but never alone and never first
    assert "`echo {text}`" in reply and not reply.split("did you mean ", 1)[1].startswith("`echo"), reply
    assert await _executions(rt) == []


# --- the seed's words (issue 10, point 7) -------------------------------------------------


@pytest.fixture
async def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Runtime, FakeAdapter]]:
    """The packaged demo catalog (System A, Service B and C on prod), its services not started."""
    for key, value in demo_env(tmp_path / "data").items():
        monkeypatch.setenv(key, value)
    async with booted(tmp_path, DEMO_CATALOG) as pair:
        yield pair


@pytest.mark.parametrize("line", ["Is Service C running", "Is Service C running?", "is service c running",
                                  "is servicec running", "IS SERVICE-C RUNNING ?"])
async def test_seed_is_service_c_running(demo: tuple[Runtime, FakeAdapter], line: str) -> None:
    rt, fake = demo
    reply = await _ask(fake, "you", line)
    assert reply.startswith("service-c is "), reply
    assert await _executions(rt) == []


@pytest.mark.parametrize("line", ["Run System A Health Check", "run system a health check?", "Run systema healthcheck",
                                  "health check System A", "status of system a", "is System A running"])
async def test_seed_run_system_a_health_check_is_the_read_only_health(
        demo: tuple[Runtime, FakeAdapter], line: str) -> None:
    rt, fake = demo
    reply = await _ask(fake, "dev", line)  # a viewer: it is a question, nothing runs
    assert reply.startswith("[PROD] service-b "), reply
    assert "System A is" in reply and "service-c" in reply
    assert await _executions(rt) == []


@pytest.mark.parametrize("line", ["Start Service B", "start service b", "Start Service B."])
async def test_seed_start_service_b_asks_for_approval_on_prod(demo: tuple[Runtime, FakeAdapter], line: str) -> None:
    rt, fake = demo
    await fake.say("ops", "you", line)
    msg = await fake.wait_for(lambda m: "needs approval" in m.text)
    assert "start service-b" in msg.text and "PROD" in msg.text and "asking boss" in msg.text
    assert [r.status for r in await _executions(rt)] == ["awaiting_approval"]  # type: ignore[attr-defined]
    assert "dev may not run runbooks" in await _ask(fake, "dev", line)  # the service layer still decides


async def test_help_start_shows_the_alias_and_its_parameters(demo: tuple[Runtime, FakeAdapter]) -> None:
    _rt, fake = demo
    reply = await _ask(fake, "dev", "help start")
    assert "`start {service}`" in reply and "run start-service service=<service>" in reply, reply


@pytest.mark.parametrize("line", ["status of svc", "what's the status of svc", "whats the status of SVC?",
                                  "is svc down", "is svc up", "is Svc down?", "what's up with svc",
                                  "how is svc", "how's svc doing?", "what\u2019s up with svc", "status svc",
                                  "svc health check"])
async def test_tired_variants_answer_the_service_status(running: tuple[Runtime, FakeAdapter], line: str) -> None:
    rt, fake = running
    reply = await _ask(fake, "dev", line)
    assert reply.startswith("svc is running"), reply
    assert await _executions(rt) == []


async def test_status_of_a_system_is_its_health(running: tuple[Runtime, FakeAdapter]) -> None:
    _rt, fake = running
    assert (await _ask(fake, "dev", "status of sys")).endswith("Sys is healthy")
    assert (await _ask(fake, "dev", "what's up with Sys?")).endswith("Sys is healthy")


@pytest.mark.parametrize("line", ["is web down", "status of web", "what's up with web", "how is web"])
async def test_unknown_name_answers_with_the_known_names(running: tuple[Runtime, FakeAdapter], line: str) -> None:
    rt, fake = running
    reply = await _ask(fake, "dev", line)
    assert reply == "I don't know a service called 'web' — services: svc", reply
    assert "Traceback" not in reply and await _executions(rt) == []


@pytest.mark.parametrize("line", ["show executions", "executions", "list executions", "Show me the recent executions?"])
async def test_executions_are_listed_for_a_viewer_and_audited(
        running: tuple[Runtime, FakeAdapter], line: str) -> None:
    rt, fake = running
    assert await _ask(fake, "dev", line) == "no executions yet"
    await _ask(fake, "you", "echo hello")
    (row,) = await _executions(rt)
    reply = await _ask(fake, "dev", line)
    assert reply.startswith("recent executions:") and f"#{row.id} " in reply and "(by you)" in reply, reply  # type: ignore[attr-defined]
    records = await audit.list_records(rt, actor=SYSTEM, limit=200)
    assert any(r.action == "execution.list" and r.actor == "dev" and r.door == "chat" for r in records)


async def test_help_one_command(running: tuple[Runtime, FakeAdapter]) -> None:
    _rt, fake = running
    reply = await _ask(fake, "dev", "help run")
    assert "`run {args}`" in reply and "run echo-args text=<string>" in reply and "run count n=<string>" in reply
    assert "run echo-args text=<string>" in await _ask(fake, "dev", "help echo")
    assert "run deploy" in await _ask(fake, "dev", "help deploy")
    assert "`health {system}`" in await _ask(fake, "dev", "help health")
    reply = await _ask(fake, "dev", "help helth")
    assert reply.startswith("there is no command 'helth'") and "`health {system}`" in reply, reply


async def test_a_question_is_never_answered_with_only_a_change(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    for line in ("whats happening with svc?", "show me echo", "ech hello?"):
        reply = await _ask(fake, "you", line)
        suggested = reply.split("did you mean ", 1)[1]
        assert "`echo" not in suggested and "`run" not in suggested and "`approve" not in suggested, reply
    assert await _executions(rt) == []


def test_every_phrase_is_documented() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "chat.md").read_text()
    for phrase in PHRASES:
        assert f"`{phrase.pattern}`" in text, phrase.pattern


async def test_a_run_line_with_key_values_is_never_read_as_a_phrase(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    reply = await _ask(fake, "you", "run echo-args text=x health check")
    assert "'health' is not key=value" in reply, reply  # the run's own answer, not a status about "echo-args"
    assert await _executions(rt) == []
    assert (await _ask(fake, "dev", "what's going on?")).startswith("Sys: healthy")
