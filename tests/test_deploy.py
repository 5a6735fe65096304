"""deploy/ keeps up with the CLI: every `opsroom ...` command the systemd units and the compose
file run exists and takes the options given; no password is written in them; compose runs three
servers and two workers (prod and test) on PostgreSQL and RabbitMQ."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from opsroom.cli import app

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
COMPOSE = DEPLOY / "compose.yaml"


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `opsroom`) for every opsroom command deploy/ runs."""
    found = []
    for path in UNITS:
        for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecStop"):
            if _unit(path).has_option("Service", key):
                argv = shlex.split(_unit(path).get("Service", key))
                if argv and argv[0].endswith("/opsroom"):
                    found.append((f"{path.name} {key}", [a.replace("%i", "prod") for a in argv[1:]]))
    for name, service in _compose()["services"].items():
        argv = service.get("command") or []
        if argv and argv[0] == "opsroom":
            found.append((f"compose {name}", argv[1:]))
    return found


def test_the_deploy_files_run_opsroom() -> None:
    where = {w.split()[0] for w, _ in _commands()}
    assert {"opsroom-server.service", "opsroom-worker@.service", "compose"} <= where, where


@pytest.mark.parametrize(("where", "argv"), _commands(), ids=[w for w, _ in _commands()])
def test_every_command_exists_with_its_options(where: str, argv: list[str]) -> None:
    # --help after the options given: click refuses an unknown command or option before it
    # prints the help, so an exit 0 means the command line would be accepted.
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, (where, argv, result.output)
    assert "Usage:" in result.output


def test_a_wrong_option_would_be_caught() -> None:
    assert CliRunner().invoke(app, ["serve", "--no-such-option", "--help"]).exit_code != 0  # the check above can fail
    assert CliRunner().invoke(app, ["no-such-command", "--help"]).exit_code != 0


LITERAL = re.compile(r"(?i)(password|passwd|_pass|secret|token)\s*[:=]\s*['\"]?(?![$'\"\s]|\{)[^\s'\"#]+")
URL_CREDENTIALS = re.compile(r"[a-z+]+://[^/\s:@]+:([^@\s/]+)@")


@pytest.mark.parametrize("path", [*UNITS, COMPOSE, DEPLOY / "Dockerfile"], ids=lambda p: p.name)
def test_no_password_is_written_in_the_deploy_files(path: Path) -> None:
    text = path.read_text()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        assert not LITERAL.search(line), (path.name, line)
        for password in URL_CREDENTIALS.findall(line):
            assert password.startswith("$"), (path.name, line)
    assert "guest" not in text  # RabbitMQ's default account


def test_secrets_come_from_env_files_the_operator_writes() -> None:
    for path in UNITS:
        assert _unit(path).get("Service", "EnvironmentFile").startswith("/etc/opsroom/"), path.name
    services = _compose()["services"]
    for name in ("postgres", "rabbitmq", "server-1", "worker-prod", "worker-test"):
        assert services[name].get("env_file"), name
    assert "postgres.env" in services["postgres"]["env_file"] and "rabbitmq.env" in services["rabbitmq"]["env_file"]
    # A worker reads only its own environment's env file (its broker user), not the servers'.
    assert services["worker-prod"]["env_file"] == ["worker-prod.env"]
    assert services["worker-test"]["env_file"] == ["worker-test.env"]
    assert not list(DEPLOY.glob("*.env")) or "*.env" in (DEPLOY / ".gitignore").read_text()


def test_compose_runs_three_servers_two_workers_postgresql_and_rabbitmq() -> None:
    services = _compose()["services"]
    commands = [s.get("command") or [] for s in services.values()]
    servers = [c for c in commands if c[:2] == ["opsroom", "serve"]]
    workers = [c for c in commands if c[:2] == ["opsroom", "worker"]]
    assert len(servers) == 3
    assert sorted(c[c.index("--environment") + 1] for c in workers) == ["prod", "test"]
    images = " ".join(str(s.get("image", "")) for s in services.values())
    assert "postgres:" in images and "rabbitmq:" in images
    assert "python:3.11-slim" in (DEPLOY / "Dockerfile").read_text()
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports)  # nothing published beyond loopback


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_the_units_are_hardened(path: Path) -> None:
    service = dict(_unit(path).items("Service"))
    assert service.get("User") == "opsroom" or service.get("DynamicUser") == "yes"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"].startswith("/var/lib/opsroom")
    assert service["Restart"] == "on-failure"
    assert service["CapabilityBoundingSet"] == "" and service["PrivateTmp"] == "yes"


def test_the_worker_unit_takes_its_environment_from_the_instance_name() -> None:
    unit = _unit(DEPLOY / "systemd" / "opsroom-worker@.service")
    assert shlex.split(unit.get("Service", "ExecStart"))[1:] == ["worker", "--environment", "%i"]
    assert unit.get("Service", "EnvironmentFile") == "/etc/opsroom/worker-%i.env"
