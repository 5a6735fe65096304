"""Documentation must keep up: every setting, catalog field, chat command and CLI command is documented."""

from __future__ import annotations

import re
from pathlib import Path

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
