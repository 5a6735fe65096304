"""Documentation must keep up: every setting, catalog field, chat command and CLI command is documented."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer.main

from opsroom.catalog import schema
from opsroom.chat.commands import BUILTINS
from opsroom.cli import app
from opsroom.config import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _section(text: str, heading: str) -> str:
    start = text.index(f"### {heading}\n")
    nxt = text.find("\n### ", start + 1)
    return text[start: nxt if nxt != -1 else None]


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_every_setting_is_documented(field: str) -> None:
    text = (DOCS / "settings.md").read_text()
    assert f"`OPSROOM_{field.upper()}` (`{field}`)" in text


KINDS = {
    "environments": [schema.Environment], "systems": [schema.System], "services": [schema.Service],
    "checks": [schema.HttpCheck, schema.TcpCheck, schema.ProcessCheck, schema.CommandCheck, schema.SyntheticCheck,
               schema.SyntheticStep],
    "runbooks": [schema.Runbook, schema.Parameter, schema.Step, schema.HttpCall],
    "rules": [schema.Rule, schema.RuleWhen, schema.RuleThen, schema.Policy, schema.Verify],
    "rooms": [schema.Room], "aliases": [schema.Alias], "roles": [schema.Role], "users": [schema.User],
    "platforms": [schema.Platform], "alert_sources": [schema.AlertSource], "hosts": [schema.Host],
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_catalog_field_is_documented(kind: str) -> None:
    assert set(KINDS) == set(schema.KINDS)
    section = _section((DOCS / "catalog.md").read_text(), kind)
    missing = [f"{m.__name__}.{f}" for m in KINDS[kind] for f in m.model_fields if f"`{f}`" not in section]
    assert not missing, f"docs/catalog.md section {kind} lacks {missing}"


@pytest.mark.parametrize("pattern", [b.pattern for b in BUILTINS])
def test_every_chat_command_is_documented(pattern: str) -> None:
    assert f"`{pattern}`" in (DOCS / "chat.md").read_text()


def _cli_commands() -> list[str]:
    group = typer.main.get_command(app)
    names: list[str] = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        names += [f"{name} {s}" for s in subs] if subs else [name]
    return names


def test_every_cli_command_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    commands = _cli_commands()
    assert "catalog validate" in commands and "demo" in commands
    missing = [c for c in commands if f"`opsroom {c}`" not in text]
    assert not missing, missing


def test_readme_starts_with_the_two_commands() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    first = readme.split("\n## ", 2)[1]
    assert re.search(r"make demo\s+#", first) and re.search(r"make test\s+#", first)


def _hookspecs() -> list[str]:
    from opsroom import hookspecs

    return sorted(n for n in dir(hookspecs) if n.startswith("opsroom_")
                  and hasattr(getattr(hookspecs, n), "opsroom_spec"))


@pytest.mark.parametrize("hook", _hookspecs())
def test_every_plugin_hook_is_documented(hook: str) -> None:
    assert f"### `{hook}`" in (DOCS / "plugins.md").read_text(), f"docs/plugins.md has no section for {hook}"


def test_the_hookspecs_are_found() -> None:
    assert len(_hookspecs()) >= 4  # the test above cannot pass by finding none


PLATFORMS = ["slack", "teams", "mattermost", "matrix", "telegram", "irc", "xmpp"]


@pytest.mark.parametrize("kind", PLATFORMS)
def test_every_platform_has_its_page_with_every_setting(kind: str) -> None:
    from opsroom.plugins import adapter_class

    page = DOCS / "chat" / f"{kind}.md"
    assert page.exists(), f"docs/chat/{kind}.md is missing"
    text = page.read_text()
    assert f"chat/{kind}.md" in (DOCS / "chat.md").read_text(), "docs/chat.md does not link the page"
    missing = [f for f in adapter_class(kind).Config.model_fields if f"`{f}`" not in text]
    assert not missing, f"docs/chat/{kind}.md does not document {missing}"
    assert "bind" in text and "platforms:" in text, "the page shows no catalog item or binding"


def _field(model: type[Any], name: str) -> Any:
    return model.model_fields[name].default


def _room_permission() -> str:
    """The permission that opens a room: refused without it, and nothing else is asked for."""
    import asyncio

    from opsroom.access.identity import Actor
    from opsroom.errors import PermissionDenied
    from opsroom.rooms import service as rooms

    async def open_as(permissions: set[str]) -> Exception:
        try:
            await rooms.open_room(None, actor=Actor("someone", "api", frozenset(), frozenset(permissions)),  # type: ignore[arg-type]
                                  room="ops")
        except Exception as exc:
            return exc
        raise AssertionError("open_room with no runtime cannot succeed")

    refused = asyncio.run(open_as(set()))
    assert isinstance(refused, PermissionDenied) and "'status.read'" in str(refused.hint)
    assert not isinstance(asyncio.run(open_as({"status.read"})), PermissionDenied)  # past the only gate
    return "status.read"


def _auto_approver() -> str:
    from opsroom.runbooks import service as runbooks

    # The role `approval: auto` asks on a protected environment, as the service layer decides it.
    found = re.search(r'roles = \["(\w+)"\] if protected else \[\]', inspect.getsource(runbooks))
    assert found, "runbooks/service.py no longer decides `auto` as this test expects; update docs/defaults.md"
    return found.group(1)


def _profiles_file() -> str:
    import os
    from unittest import mock

    from opsroom.cli import profiles

    with mock.patch.dict(os.environ, {"HOME": "/home/someone"}, clear=True):
        return str(profiles.path()).replace("/home/someone", "~", 1)


def _defaults() -> dict[str, Callable[[], Any]]:
    from opsroom.access import links, names, throttle
    from opsroom.access import service as access
    from opsroom.access.identity import BUILTIN_ROLES, Actor, permissions_for
    from opsroom.access.models import ApiTokenRow
    from opsroom.cli import remote, runs
    from opsroom.domain import approval
    from opsroom.rooms import service as rooms
    from opsroom.runbooks import executor
    from opsroom.web import security

    assert all(Actor("x", "api", frozenset({r}), permissions_for([r])).can("status.read") for r in BUILTIN_ROLES), \
        "docs/defaults.md says every built-in role sees every room"
    s = schema
    return {
        "password minimum length": lambda: access.MIN_PASSWORD,
        "web session lifetime": lambda: _field(Settings, "session_hours") * 3600,
        "API token lifetime": lambda: "never" if "expires_at" not in ApiTokenRow.__table__.c else "expires",
        "chat link code lifetime": lambda: links.CODE_TTL_S,
        "role of a catalog user with no `roles`": lambda: ", ".join(_field(s.User, "roles")),
        "permission to see a room": _room_permission,
        "user name length": lambda: names.MAX_NAME,
        "login: failures per user name": lambda: throttle.USER_FAILURES,
        "login: failures per client address": lambda: throttle.ADDRESS_FAILURES,
        "login: window the failures count in": lambda: throttle.WINDOW_S,
        "login: first lockout": lambda: throttle.BASE_LOCK_S,
        "login: longest lockout": lambda: throttle.MAX_LOCK_S,
        "who must approve a run a person asks for": lambda: _field(s.Runbook, "approval"),
        "role asked under `auto` on a protected environment": _auto_approver,
        "an environment is protected": lambda: _field(s.Environment, "protected"),
        "approval request expiry": lambda: approval.DEFAULT_EXPIRY_S,
        "deny reason length": lambda: approval.MAX_REASON,
        "a rule's runs need approval": lambda: _field(s.Policy, "approval"),
        "check interval": lambda: _field(s.HttpCheck, "interval"),
        "check retry interval (while soft non-OK)": lambda: (
            "the interval" if _field(s.HttpCheck, "retry_interval") is None else _field(s.HttpCheck, "retry_interval")),
        "check timeout": lambda: _field(s.HttpCheck, "timeout"),
        "check attempts before a state is hard": lambda: _field(s.HttpCheck, "max_attempts"),
        "flapping: clear below": lambda: _field(s.HttpCheck, "flap_low"),
        "flapping: raise above": lambda: _field(s.HttpCheck, "flap_high"),
        "http: method": lambda: _field(s.HttpCheck, "method"),
        "http: expected status": lambda: ", ".join(map(str, _field(s.HttpCheck, "expect_status"))),
        "http: verify TLS certificates": lambda: _field(s.HttpCheck, "verify_tls"),
        "http: certificate WARNING below": lambda: _field(s.HttpCheck, "cert_warning_days"),
        "http: certificate CRITICAL below": lambda: _field(s.HttpCheck, "cert_critical_days"),
        "process: processes that must run": lambda: _field(s.ProcessCheck, "min_count"),
        "results kept per check": lambda: _field(Settings, "check_result_retention"),
        "a steady OK check keeps one result every": lambda: _field(Settings, "check_result_ok_interval"),
        "runbook timeout (all steps)": lambda: _field(s.Runbook, "timeout"),
        "step timeout": lambda: _field(s.Step, "timeout"),
        "check step deadline": lambda: _field(s.Step, "deadline"),
        "check step poll": lambda: _field(s.Step, "poll"),
        "parameter length": lambda: _field(s.Parameter, "max_length"),
        "cancel: grace before SIGKILL": lambda: executor.CANCEL_GRACE_S,
        "output kept per execution": lambda: executor.MAX_OUTPUT,
        "ssh hosts at once": lambda: _field(s.Runbook, "parallel"),
        "rule reacts to state": lambda: ", ".join(_field(s.RuleWhen, "state")),
        "rule reacts to state type": lambda: _field(s.RuleWhen, "state_type"),
        "rule runs at most, per window": lambda: _field(s.Policy, "max_runs"),
        "rule window": lambda: _field(s.Policy, "window"),
        "rule cooldown between runs": lambda: _field(s.Policy, "cooldown"),
        "rule verify deadline": lambda: _field(s.Verify, "deadline"),
        "rule escalates to people when it fails": lambda: _field(s.Policy, "escalate"),
        "listen address": lambda: _field(Settings, "host"),
        "listen port": lambda: _field(Settings, "port"),
        "request body limit": lambda: _field(Settings, "max_body_bytes"),
        "web room frame limit": lambda: security.MAX_FRAME_CHARS,
        "messages a reconnecting room socket replays": lambda: rooms.REPLAY_MAX,
        "log level": lambda: _field(Settings, "log_level"),
        "ssh: port": lambda: _field(s.Host, "port"),
        "ssh: sessions at once per host": lambda: _field(s.Host, "max_sessions"),
        "ssh: connect timeout": lambda: _field(s.Host, "connect_timeout"),
        "CLI server when no profile or option names one": lambda: remote.DEFAULT_URL,
        "CLI profiles file": _profiles_file,
        "CLI request timeout": lambda: inspect.signature(remote.api_client).parameters["timeout"].default,
        "`runbook run` waits for the end of the run": lambda: (
            "until it ends" if inspect.signature(runs.runbook_run).parameters["timeout"].default is None else
            inspect.signature(runs.runbook_run).parameters["timeout"].default),
    }


def _documented_defaults() -> dict[str, str]:
    """name -> the value's first code span, for every row of docs/defaults.md's tables."""
    rows: dict[str, str] = {}
    for line in (DOCS / "defaults.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3 or cells[0] in ("default", "---"):
            continue
        value = re.match(r"`([^`]*)`|([^|`]+)", cells[1])
        assert value, f"docs/defaults.md: row {cells[0]!r} has no value"
        assert cells[0] not in rows, f"docs/defaults.md names {cells[0]!r} twice"
        rows[cells[0]] = (value.group(1) or value.group(2)).strip()
    return rows


def _same(written: str, actual: Any) -> bool:
    from opsroom.catalog.durations import parse_duration

    if isinstance(actual, bool):
        return written == str(actual).lower()
    if isinstance(actual, int | float):
        try:
            return math.isclose(parse_duration(written), float(actual))  # `12`, `0.25`, `15m`, `500ms`
        except ValueError:
            return False
    return written == str(actual)


def test_every_default_in_docs_defaults_matches_the_code() -> None:
    documented, known = _documented_defaults(), _defaults()
    assert set(documented) == set(known), (
        f"docs/defaults.md rows without a check here: {sorted(set(documented) - set(known))}; "
        f"checked here but not on the page: {sorted(set(known) - set(documented))}")
    wrong = {name: (documented[name], known[name]()) for name in known if not _same(documented[name], known[name]())}
    assert not wrong, f"docs/defaults.md (written, code): {wrong}"


@pytest.mark.parametrize("written, actual, same", [("15m", 900, True), ("12", 12, True), ("0.25", 0.25, True),
                                                   ("500ms", 0.5, True), ("10m", 60, False), ("true", True, True),
                                                   ("false", True, False), ("auto", "auto", True), ("x", 3, False)])
def test_defaults_compare_as_the_page_writes_them(written: str, actual: Any, same: bool) -> None:
    assert _same(written, actual) is same


def test_the_tutorial_and_docs_index_link_the_defaults() -> None:
    assert "(defaults.md)" in (DOCS / "tutorial.md").read_text() and "(defaults.md)" in (DOCS / "README.md").read_text()
    readme = (DOCS.parent / "README.md").read_text()
    assert "docs/defaults.md" in readme and "(docs/tutorial.md)" in readme


MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [DOCS.parent / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS.parent)))
def test_docs_stand_on_their_own_inside_the_repository(page: Path) -> None:
    """Every relative link resolves to a file of the repository; nothing points outside it."""
    root = DOCS.parent.resolve()
    text = page.read_text()
    assert "../shared" not in text and "DESIGN.md" not in text, f"{page.name} refers to a file outside the repository"
    prose = re.sub(r"^```.*?^```|``.*?``|`[^`\n]*`", "", text, flags=re.MULTILINE | re.DOTALL)  # code shows links
    for target in MARKDOWN_LINK.findall(prose):
        if re.match(r"[a-z][a-z0-9+.-]*:|#", target):  # https:, mailto:, an anchor
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(root), f"{page.name} links {target}, outside the repository"
        assert path.exists(), f"{page.name} links {target}, which does not exist"


def test_the_docs_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text()
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "README.md" and f"]({p.name})" not in index]
    assert not missing, f"docs/README.md does not link {missing}"
