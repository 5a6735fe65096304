"""What the stream and remote-CLI tests share: a catalog with slow runbooks, a served opsroom with
tokens and passwords, and a reader of Server-Sent Events that notes when each event arrived."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.harness import Served, served_with_tokens
from tests.factories import small_catalog

LINES = 3
PAUSE_S = 1.5  # more than the executor's one-second output batching, so each line is its own event
# Prints LINES lines with a pause after each: the run lasts LINES * PAUSE_S seconds.
SLOW = [sys.executable, "-c",
        f"import time\nfor i in range({LINES}):\n    print(f'line {{i}}', flush=True)\n    time.sleep({PAUSE_S})"]
PASSWORDS = {"boss": "boss-long-password-1", "you": "you-long-password-12"}


def stream_catalog(tmp: Path) -> Path:
    """small_catalog plus `slow` (no approval) and `slow-prod` (a protected environment: approval)."""
    return small_catalog(tmp, runbooks=[
        {"name": "slow", "approval": "none", "environment": "test", "steps": [{"command": SLOW}]},
        {"name": "slow-prod", "environment": "prod", "steps": [{"command": SLOW}]},
        {"name": "fails", "approval": "none", "environment": "test",
         "steps": [{"command": [sys.executable, "-c", "print('about to fail'); raise SystemExit(3)"]}]},
        {"name": "count", "approval": "none", "environment": "test",
         "parameters": {"n": {"type": "string", "pattern": "[0-9]{1,3}"}},
         "steps": [{"command": [sys.executable, "-c", "import sys; print(sys.argv[1])", "{{ params.n }}"]}]},
    ], aliases=[], users=[{"name": "you", "roles": ["operator"], "password_env": "OPSROOM_TEST_PW_YOU"},
              {"name": "boss", "roles": ["approver"], "password_env": "OPSROOM_TEST_PW_BOSS"},
              {"name": "dev", "roles": ["viewer"]}, {"name": "nobody", "roles": []}])


@contextmanager
def served(tmp: Path, users: tuple[str, ...] = ("you", "boss", "dev", "nobody")) -> Iterator[Served]:
    # Passwords from the catalog, set as the server starts: set with `user passwd` once it runs, each
    # reached the server as an access change up to a poll later, and ended the streams a test had
    # just opened (access_changed) when the machine was slow.
    env = {f"OPSROOM_TEST_PW_{user.upper()}": password for user, password in PASSWORDS.items()}
    with served_with_tokens(tmp, stream_catalog(tmp), users, env_extra=env) as s:
        yield s


@dataclass
class Event:
    name: str
    data: Any
    id: str | None
    at: float  # time.monotonic() when it arrived


def events(resp: httpx.Response) -> Iterator[Event]:
    """Parse a text/event-stream as it arrives; comment lines (pings) are skipped."""
    name, data, eid = "message", [], None
    for line in resp.iter_lines():
        if line == "":
            if data:
                yield Event(name, json.loads("\n".join(data)), eid, time.monotonic())
            name, data, eid = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                eid = value


def read_all(client: httpx.Client, path: str, *, until: str = "end", **kw: Any) -> list[Event]:
    got = []
    with client.stream("GET", path, **kw) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for ev in events(resp):
            got.append(ev)
            if ev.name in (until, "error"):
                break
    return got
