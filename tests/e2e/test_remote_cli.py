"""Acceptance 1 of issue 13: the CLI from another machine's point of view.

The installed `opsroom` runs as a subprocess with a HOME of its own, no OPSROOM_* settings and no
way to the server's data directory (OPSROOM_DATA points at nothing): it logs in (the token on
stdin), asks for a runbook that needs approval, says who was asked, waits while an approver
approves in the web room (its WebSocket), prints each line of the run as the runbook prints it
(arrival times prove the lines come before the end), and exits with the run's code; `-o json`
gives an object that parses.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.harness import RoomClient, login
from tests.e2e.sse import LINES, PASSWORDS, PAUSE_S, Served, served

pytestmark = pytest.mark.e2e

OPSROOM = shutil.which("opsroom", path=str(Path(sys.executable).parent)) or "opsroom"


def _away(tmp: Path) -> dict[str, str]:
    """Another machine: its own HOME and config, nothing of the server's environment."""
    home = tmp / "laptop"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSROOM_")}
    return {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "OPSROOM_DATA": str(tmp / "no-such-data-dir"), "COLUMNS": "200"}


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPSROOM, *args], capture_output=True, text=True, timeout=60, env=env, input=stdin,
                          cwd=env["HOME"])


class Watched:
    """A CLI run whose stdout lines are kept with the moment each arrived."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([OPSROOM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, cwd=env["HOME"], bufsize=1)
        self.lines: list[tuple[float, str]] = []
        self.errors: list[tuple[float, str]] = []
        self.ended: float | None = None
        self._readers = [threading.Thread(target=self._read, args=(s, k), daemon=True)
                         for s, k in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors))]
        for r in self._readers:
            r.start()

    def _read(self, stream: object, into: list[tuple[float, str]]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append((time.monotonic(), line))

    def wait_line(self, pattern: str, *, stderr: bool = False, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        where = self.errors if stderr else self.lines
        while time.monotonic() < deadline:
            for _, line in where:
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; stdout={self.lines} stderr={self.errors}")

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self.ended = time.monotonic()
        for r in self._readers:
            r.join(5)
        return code

    def at(self, text: str) -> float:
        return next(t for t, line in self.lines + self.errors if line.rstrip("\n") == text)


async def _approve_in_room(s: Served, request: int) -> None:
    http = await login(s.base, "boss", PASSWORDS["boss"])
    boss = await RoomClient.open(s.base, http, "boss", "ops")
    try:
        await boss.wait_for(lambda f: f["type"] == "approvals" and any(a["id"] == request for a in f["items"]))
        await boss.say(f"approve {request}")
        await boss.wait_for(lambda f: f["type"] == "message" and "approved by boss" in f["text"])
    finally:
        await boss.close()


def _request_of(w: Watched, *, stderr: bool) -> int:
    line = w.wait_line(r"awaits approval \(request #\d+\)", stderr=stderr)
    assert "asked: approver" in line, line  # who was asked: the role the catalog names
    return int(re.search(r"request #(\d+)", line).group(1))  # type: ignore[union-attr]


@pytest.mark.timeout(300)  # a server, two approvals and a dozen CLI processes on a shared machine
def test_remote_cli_logs_in_waits_for_approval_and_streams_the_run(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        env = _away(tmp_path)
        logged = _cli(env, "login", s.base, stdin=s.tokens["you"] + "\n")
        assert logged.returncode == 0, logged.stderr
        assert "as you (operator)" in logged.stdout and s.tokens["you"] not in logged.stdout + logged.stderr
        saved = Path(env["XDG_CONFIG_HOME"]) / "opsroom" / "profiles"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        listed = _cli(env, "profiles").stdout
        assert re.search(rf"^\*\s+default\s+{re.escape(s.base)}\s+you$", listed, re.MULTILINE), listed

        # A run that needs approval, followed as it happens.
        w = Watched(env, "runbook", "run", "slow-prod")
        request = _request_of(w, stderr=False)
        asked_at = time.monotonic()
        time.sleep(1.0)
        assert w.proc.poll() is None, "the CLI must wait for the approval, not return"
        asyncio.run(_approve_in_room(s, request))
        code = w.finish()
        assert code == 0, (w.lines, w.errors)
        assert w.lines[-1][1].strip().endswith(": succeeded"), w.lines
        firsts = [w.at(f"line {i}") for i in range(LINES)]
        assert firsts == sorted(firsts) and firsts[0] > asked_at
        # Each line arrived when the runbook printed it: well before the next, and the first long
        # before the run ended (the run pauses PAUSE_S after each line).
        assert all(b - a > PAUSE_S * 0.5 for a, b in itertools.pairwise(firsts)), firsts
        assert w.ended is not None and w.ended - firsts[0] > PAUSE_S * (LINES - 1), (firsts, w.ended)

        # A run that fails: the CLI exits 1 and shows what it printed.
        failed = _cli(env, "runbook", "run", "fails")
        assert failed.returncode == 1 and "about to fail" in failed.stdout and ": failed" in failed.stdout

        # The same with -o json: the live lines on stderr, one object on stdout that parses.
        j = Watched(env, "runbook", "run", "slow-prod", "-o", "json")
        request = _request_of(j, stderr=True)
        asyncio.run(_approve_in_room(s, request))
        assert j.finish() == 0, (j.lines, j.errors)
        final = json.loads("".join(line for _, line in j.lines))
        assert final["status"] == "succeeded" and final["runbook"] == "slow-prod"
        assert "line 2" in final["output"] and final.get("catalog_hash")
        assert any(line.startswith("line 0") for _, line in j.errors)

        shown = _cli(env, "execution", str(final["id"]))
        assert shown.returncode == 0 and f"catalog_hash: {final['catalog_hash']}" in shown.stdout
        as_yaml = _cli(env, "-o", "yaml", "executions")
        assert as_yaml.returncode == 0 and f"id: {final['id']}" in as_yaml.stdout


@pytest.mark.timeout(400)  # some thirty CLI processes, each a Python start
def test_every_remote_command_and_its_exit_code(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        you, boss = _away(tmp_path), {**_away(tmp_path), "OPSROOM_PROFILE": "boss"}
        assert _cli(you, "login", s.base, "--token", s.tokens["you"]).returncode == 0
        assert _cli(you, "login", s.base, "--profile", "boss", "--token", s.tokens["boss"]).returncode == 0
        assert _cli(you, "login", s.base, "--profile", "you", "--token", s.tokens["you"]).returncode == 0

        def ok(env: dict[str, str], *args: str, code: int = 0) -> str:
            result = _cli(env, *args)
            assert result.returncode == code, (args, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr
            return result.stdout

        assert "sys" in ok(you, "status")
        assert json.loads(ok(you, "status", "-o", "json"))[0]["system"] == "sys"
        assert "svc-cmd" in ok(you, "health", "sys") and "svc-cmd" in ok(you, "checks")
        assert "svc-cmd: OK" in ok(you, "check", "run", "svc-cmd", "--nagios")
        assert "slow-prod" in ok(you, "runbooks") and "(none)" in ok(you, "approvals")
        assert "(none)" in ok(you, "alerts") or "ID" in ok(you, "alerts")
        eid = json.loads(ok(you, "runbook", "run", "slow-prod", "--no-wait", "-o", "json"))["id"]
        request = json.loads(ok(you, "-o", "json", "approvals"))[0]["id"]
        ok(you, "approve", str(request), code=3)  # not an approver, and not one's own request
        assert f"request #{request}: denied" in ok(boss, "deny", str(request), "not now")
        assert "denied" in ok(you, "execution", str(eid), code=1)
        eid = json.loads(ok(you, "runbook", "run", "slow", "--no-wait", "-o", "json"))["id"]
        assert f"execution #{eid}: cancelled" in ok(you, "cancel", str(eid))
        assert str(eid) in ok(you, "executions", "--status", "cancelled")

        ok(you, "health", "nope", code=4)
        ok(you, "execution", "99999", code=4)
        ok(you, "runbook", "run", "count", "n=x", code=2)
        ok(you, "status", "--profile", "nosuch", code=2)
        ok({**you, "OPSROOM_PROFILE": "nobody-here"}, "status", code=2)
        unreachable = _cli({**_away(tmp_path / "x"), "OPSROOM_URL": "http://127.0.0.1:9", "OPSROOM_TOKEN": "opr_x"},
                           "status")
        assert unreachable.returncode == 5 and "cannot reach" in unreachable.stderr
        ok(you, "frobnicate", code=2)
        assert "Usage" in ok(you, "runbook", "run", "-h")
        assert ok(you, "--version").startswith("opsroom ")
        assert "_opsroom_completion" in ok(you, "completion", "bash")
        assert "compdef" in ok(you, "completion", "zsh")
        ok(you, "completion", "tcsh", code=2)
        assert "* " in ok(you, "profiles") and "boss" in ok(you, "profiles")
        assert "forgotten" in ok(you, "logout", "--profile", "boss")
        ok(you, "logout", "--profile", "boss", code=4)
