"""CLI door security: the server decides every run, the terminal obeys nothing a runbook prints,
admin commands never answer from a store they made up, and access taken away ends at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import sqlite3
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.exceptions import ConnectionClosed

from opsroom.catalog.loader import load_catalog
from opsroom.cli.terminal import clean
from tests.e2e.harness import Demo, cli, join, start_demo, start_server
from tests.factories import small_catalog, write_catalog

# --- the terminal --------------------------------------------------------------------------------

HOSTILE = {
    "set title (OSC 0, BEL)": ("\x1b]0;you have been pwned\x07done", "done"),
    "set title (OSC 2, ST)": ("\x1b]2;title\x1b\\done", "done"),
    "clear screen and home": ("\x1b[2J\x1b[Hdone", "done"),
    "hidden text": ("\x1b[8msecret\x1b[28mdone", "secretdone"),
    "OSC 8 hyperlink": ("\x1b]8;;https://evil.example/\x1b\\click here\x1b]8;;\x1b\\", "click here"),
    "bell": ("a\x07b\x07", "ab"),
    "C1 CSI (8-bit)": ("\x9b2Jdone", "done"),
    "C1 OSC (8-bit)": ("\x9d0;title\x9cdone", "done"),
    "DCS request (answerback)": ("\x1bP$q m\x1b\\done", "done"),
    "full reset": ("\x1bcdone", "done"),
    "carriage return overwrite": ("rm -rf /\rls", "rm -rf /ls"),
    "backspace overwrite": ("approve\x08\x08\x08\x08\x08\x08\x08deny", "approvedeny"),
    "bidi override": ("file\u202egpj.exe", "filegpj.exe"),
    "NUL and DEL": ("a\x00b\x7fc", "abc"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_clean_drops_escape_sequences_and_control_characters(case: str) -> None:
    text, shown = HOSTILE[case]
    assert clean(text) == shown


def test_clean_keeps_text_newlines_and_tabs() -> None:
    text = "line 1\n\tindented: ünïcödé 日本 ✓\r\nline 3 [bold]not markup[/bold] :smile:\n"
    assert clean(text) == "line 1\n\tindented: ünïcödé 日本 ✓\nline 3 [bold]not markup[/bold] :smile:\n"


def test_catalog_errors_are_cleaned(tmp_path: Path) -> None:
    # A catalog under review (a contributor's change) names a check with a set-title sequence.
    path = write_catalog(tmp_path / "cat", 'checks:\n  - name: "a\\e]0;pwned\\a\\e[2J"\n    type: htp\n')
    result = cli("catalog", "validate", str(path))
    assert result.returncode == 2 and "unknown check type 'htp'" in result.stderr, result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


# --- a real server -------------------------------------------------------------------------------

NOISY = ("import sys; sys.stdout.write('\\x1b]0;pwned\\x07\\x1b[2J\\x1b[Hhello "
         "\\x1b]8;;https://evil.example/\\x1b\\\\link\\x1b]8;;\\x1b\\\\ \\x9b2J\\x07bye\\n')")


def _server_catalog(tmp: Path) -> Path:
    catalog = small_catalog(tmp)
    data = yaml.safe_load((catalog / "catalog.yaml").read_text())
    data["runbooks"].append({"name": "noisy", "approval": "none", "environment": "test",
                             "steps": [{"command": [sys.executable, "-c", NOISY]}]})
    return write_catalog(catalog, data)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    tmp = tmp_path_factory.mktemp("clisec")
    running = start_server(tmp, ["serve", "--catalog", str(_server_catalog(tmp))])
    yield running
    running.stop()


def _token(server: Demo, user: str, name: str = "cli") -> str:
    made = cli("token", "create", user, "--name", name, "--data", str(server.data))
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def _audit(server: Demo, action: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(server.data / "opsroom.db") as db:
        return db.execute("SELECT actor, door, target, outcome, details FROM audit_records WHERE action = ? "
                          "ORDER BY seq", (action,)).fetchall()


def test_a_doctored_catalog_copy_does_not_skip_approval(server: Demo, tmp_path: Path) -> None:
    # The operator's own copy of the catalog: prod's deploy needs nobody, and a runbook the
    # server never reviewed writes a marker file if it ever runs anywhere.
    marker = tmp_path / "wiped"
    copy = small_catalog(tmp_path)
    data = yaml.safe_load((copy / "catalog.yaml").read_text())
    next(r for r in data["runbooks"] if r["name"] == "deploy")["approval"] = "none"
    data["runbooks"].append({"name": "wipe", "approval": "none", "environment": "prod", "steps": [
        {"command": [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('x')"]}]})
    write_catalog(copy, data)
    token = _token(server, "you")
    as_you = ["--server", server.base, "--token", token]

    asked = cli("runbook", "run", "deploy", "--no-wait", *as_you, env={"OPSROOM_CATALOG": str(copy)})
    assert asked.returncode == 0, asked.stderr
    found = re.search(r"execution #(\d+) awaits approval \(request #\d+\)", asked.stdout)
    assert found, asked.stdout
    given = cli("runbook", "run", "deploy", "--catalog", str(copy), *as_you)
    assert given.returncode == 2 and "No such option" in given.stderr  # the option is gone, not ignored
    unknown = cli("runbook", "run", "wipe", *as_you, env={"OPSROOM_CATALOG": str(copy)})
    assert unknown.returncode == 4 and "I don't know a runbook called 'wipe'" in unknown.stderr
    assert not marker.exists()

    # The server's runbook, its hash, and its approval: not the copy's.
    execution = int(found.group(1))
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {token}"}) as api:
        listed = {r["name"]: r for r in api.get("/api/v1/runbooks").json()}
    server_hash = listed["deploy"]["content_hash"]
    assert server_hash != load_catalog(copy).runbooks["deploy"].content_hash
    with sqlite3.connect(server.data / "opsroom.db") as db:
        row = db.execute("SELECT runbook_hash, status, door, approval_id FROM executions WHERE id = ?",
                         (execution,)).fetchone()
    assert row[0] == server_hash and row[1] == "awaiting_approval" and row[2] == "api" and row[3] is not None
    asked_records = [r for r in _audit(server, "runbook.run") if json.loads(r[4]).get("execution") == execution]
    assert [(r[0], r[1], r[3]) for r in asked_records] == [("you", "api", "awaiting_approval")]


def test_runbook_output_reaches_the_terminal_without_escape_sequences(server: Demo) -> None:
    token = _token(server, "you")
    ran = cli("runbook", "run", "noisy", "--server", server.base, "--token", token)
    assert ran.returncode == 0, ran.stderr
    assert "hello link bye" in ran.stdout and "succeeded" in ran.stdout
    for control in ("\x1b", "\x07", "\x9b", "\x9c", "\x9d"):
        assert control not in ran.stdout + ran.stderr, repr(control)
    # The output did hold them: the server keeps what the runbook wrote, the CLI shows it safely.
    execution = int(re.search(r"execution #(\d+)", ran.stdout).group(1))  # type: ignore[union-attr]
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {token}"}) as api:
        raw = api.get(f"/api/v1/executions/{execution}").json()["output"]
    assert "\x1b]0;pwned" in raw


def test_error_details_from_the_server_are_cleaned(server: Demo) -> None:
    token = _token(server, "you")
    # A name echoed back in the server's 404 detail and hint.
    asked = cli("runbook", "run", "x\x1b]0;pwned\x07y", "--server", server.base, "--token", token)
    assert asked.returncode == 4
    assert "\x1b" not in asked.stderr and "\x07" not in asked.stderr and "error: " in asked.stderr


def test_user_disable_and_token_revoke_take_effect_at_once(server: Demo) -> None:
    data = ["--data", str(server.data)]
    lead = _token(server, "lead", "lead-laptop")
    other = _token(server, "lead", "lead-desktop")
    dev = _token(server, "dev", "dev-laptop")

    def check(token: str) -> Any:
        return cli("check", "run", "svc-cmd", "--server", server.base, "--token", token)

    assert check(lead).returncode == 0 and check(dev).returncode == 0

    disabled = cli("user", "disable", "dev", *data)
    assert disabled.returncode == 0, disabled.stderr
    refused = check(dev)  # same server process, no restart
    assert refused.returncode == 3 and "invalid or revoked API token" in refused.stderr
    assert "disabled" in cli("user", "list", *data).stdout
    enabled = cli("user", "enable", "dev", *data, "--catalog", str(server.data.parent / "catalog"))
    assert enabled.returncode == 0, enabled.stderr
    assert check(dev).returncode == 0

    listed = cli("token", "list", "lead", *data)
    assert listed.returncode == 0, listed.stderr
    assert lead not in listed.stdout and "dev-laptop" not in listed.stdout  # never a token's value
    found = re.search(r"(\d+)\D+lead\D+lead-laptop", listed.stdout)
    assert found, listed.stdout
    revoked = cli("token", "revoke", found.group(1), *data)
    assert revoked.returncode == 0, revoked.stderr
    gone = check(lead)
    assert gone.returncode == 3 and "invalid or revoked API token" in gone.stderr
    assert check(other).returncode == 0  # only that token
    assert re.search(r"lead-laptop.*revoked", cli("token", "list", "lead", *data).stdout)
    assert _audit(server, "token.revoke") and _audit(server, "user.disable")
    missing = cli("token", "revoke", "999999", *data)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


async def test_a_user_disabled_from_the_cli_loses_their_open_room_socket(tmp_path: Path) -> None:
    demo = start_demo(tmp_path, interval="5s")
    try:
        dev = await join(demo, "dev")
        await dev.wait_for(lambda f: f["type"] == "message" or f["type"] == "approvals")
        disabled = await asyncio.to_thread(cli, "user", "disable", "dev", "--data", str(demo.data), env=demo.env)
        assert disabled.returncode == 0, disabled.stderr
        assert dev._task is not None
        # A guard against hanging, not a measurement: the server closes the socket on its own.
        with contextlib.suppress(ConnectionClosed):  # the reader ends with the close frame's code
            await asyncio.wait_for(asyncio.shield(dev._task), 30)
        assert dev.ws.close_code == 4401, (dev.ws.close_code, dev.ws.close_reason)
        await dev.close()
    finally:
        demo.stop()


# --- admin commands on a store that is not there --------------------------------------------------

ADMIN = {
    "audit verify": ["audit", "verify"],
    "user list": ["user", "list"],
    "user add": ["user", "add", "eve", "--role", "admin"],
    "user disable": ["user", "disable", "boss"],
    "token create": ["token", "create", "boss"],
    "token list": ["token", "list"],
    "token revoke": ["token", "revoke", "1"],
}


@pytest.mark.parametrize("command", list(ADMIN))
@pytest.mark.parametrize("place", ["missing dir", "empty dir", "OPSROOM_DATA"])
def test_admin_commands_refuse_a_place_with_no_store(command: str, place: str, tmp_path: Path) -> None:
    data = tmp_path / "nowhere"
    if place == "empty dir":
        data.mkdir()
    args, env = (["--data", str(data)], {}) if place != "OPSROOM_DATA" else ([], {"OPSROOM_DATA": str(data)})
    result = cli(*ADMIN[command], *args, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: no opsroom store in {data}" in result.stderr
    assert "hint: " in result.stderr and "opsroom migrate" in result.stderr and "--data" in result.stderr
    assert "audit OK" not in result.stdout and "Traceback" not in result.stderr
    assert not (data / "opsroom.db").exists()  # nothing made up
    assert data.exists() == (place == "empty dir")


def test_only_migrate_creates_a_store_and_audit_verify_is_audited(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = cli("migrate", "--data", str(data))
    assert made.returncode == 0 and f"new store in {data}" in made.stdout, made.stderr
    verified = cli("audit", "verify", "--data", str(data))
    assert verified.returncode == 0 and "chain intact" in verified.stdout, verified.stderr
    with sqlite3.connect(data / "opsroom.db") as db:
        records = db.execute("SELECT actor, door, action, outcome FROM audit_records").fetchall()
    assert [(a.split(":")[0], d, act, o) for a, d, act, o in records] == [("local", "cli", "audit.verify", "ok")]


@pytest.mark.pg
def test_admin_commands_refuse_an_empty_postgresql_database(pg_own_url: str, tmp_path: Path) -> None:
    env = {"OPSROOM_DATABASE_URL": pg_own_url, "OPSROOM_DATA": str(tmp_path / "data")}
    for command in (["audit", "verify"], ["user", "list"], ["token", "create", "boss"]):
        refused = cli(*command, env=env)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "error: no opsroom store in postgresql" in refused.stderr and "Traceback" not in refused.stderr
    made = cli("migrate", env=env)  # "new": nothing above created the schema
    assert made.returncode == 0 and made.stdout.startswith("new store in postgresql"), made.stdout + made.stderr
    verified = cli("audit", "verify", env=env)
    assert verified.returncode == 0 and "audit OK: 0 records" in verified.stdout, verified.stderr


# --- profiles: the tokens a laptop keeps -----------------------------------------------------------

def _laptop(tmp: Path) -> dict[str, str]:
    home = tmp / "laptop"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSROOM_")}
    return {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def test_profiles_file_is_private_and_holds_only_checked_tokens(server: Demo, tmp_path: Path) -> None:
    env = _laptop(tmp_path)
    token = _token(server, "you")
    saved = Path(env["XDG_CONFIG_HOME"]) / "opsroom" / "profiles"
    wrong = cli("login", server.base, "--token", "opr_" + "x" * 43, env=env)
    assert wrong.returncode == 3 and not saved.exists(), wrong.stderr  # checked before it is kept
    done = cli("login", server.base, env=env, stdin=token + "\n")
    assert done.returncode == 0, done.stderr
    assert token not in done.stdout + done.stderr  # never echoed
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    listed = cli("profiles", "-o", "json", env=env)
    assert token not in listed.stdout and json.loads(listed.stdout)[0]["server"] == server.base

    # Information disclosure: a profiles file others can read is refused, not used.
    saved.chmod(0o644)
    refused = cli("status", env=env)
    assert refused.returncode == 2 and "can be read by other users" in refused.stderr and "chmod 600" in refused.stderr
    saved.chmod(0o600)
    # A link planted in its place (to a file of the attacker's choosing) is not followed.
    planted = tmp_path / "planted"
    planted.write_text(saved.read_text())
    planted.chmod(0o600)
    saved.unlink()
    saved.symlink_to(planted)
    linked = cli("status", env=env)
    assert linked.returncode == 2 and "not a link" in linked.stderr, linked.stderr


def test_a_profile_token_never_goes_to_another_server(server: Demo, tmp_path: Path) -> None:
    # Credential leak: `--server` naming someone else's host must not carry the saved token there.
    env = _laptop(tmp_path)
    assert cli("login", server.base, "--token", _token(server, "you"), env=env).returncode == 0
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.5)
    try:
        elsewhere = f"http://127.0.0.1:{listener.getsockname()[1]}"
        asked = cli("status", "--server", elsewhere, env=env)
        assert asked.returncode == 2 and "no token" in asked.stderr, asked.stderr
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected: no request, no token
    finally:
        listener.close()
    assert cli("status", "--server", server.base, env=env).returncode in (0, 1)  # its own server: the token


@pytest.mark.parametrize("name", ["../../etc/cron.d/x", "a/b", "", "-rf", "x" * 65, "prod\nx"])
def test_profile_names_are_names_not_paths(name: str, tmp_path: Path) -> None:
    env = _laptop(tmp_path)
    result = cli("login", "http://127.0.0.1:9", "--profile", name, "--token", "opr_x", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert not (Path(env["XDG_CONFIG_HOME"]) / "opsroom").exists()


def test_json_and_yaml_output_carry_escapes_as_text(server: Demo, tmp_path: Path) -> None:
    token = _token(server, "you")
    ran = cli("runbook", "run", "noisy", "--server", server.base, "--token", token, "-o", "json")
    assert ran.returncode == 0, ran.stderr
    for control in ("\x1b", "\x07", "\x9b", "\x9c", "\x9d"):
        assert control not in ran.stdout + ran.stderr, repr(control)
    assert "\x1b]0;pwned" in json.loads(ran.stdout)["output"]  # kept as data, escaped in the text
    as_yaml = cli("execution", str(json.loads(ran.stdout)["id"]), "--server", server.base, "--token", token,
                  "-o", "yaml")
    assert as_yaml.returncode == 0 and "\x1b" not in as_yaml.stdout
    assert "\x1b]0;pwned" in yaml.safe_load(as_yaml.stdout)["output"]
