"""Factories: catalogs written as real YAML files, users and tokens through the service layer."""

from __future__ import annotations

import json
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
DEMO_CATALOG = ROOT / "src" / "opsroom" / "demo" / "catalog"
PASSWORDS = {"you": "you-test-password", "boss": "boss-test-password", "dev": "dev-test-password",
             "admin": "admin-test-password"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_catalog(path: Path, data: dict[str, Any] | str, name: str = "catalog.yaml") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    text = textwrap.dedent(data) if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    (path / name).write_text(text)
    return path


def demo_env(data: Path, *, interval: str = "1s", auto: bool = False) -> dict[str, str]:
    """Env for the packaged demo catalog with free ports; writes the ctl's services.json."""
    ports = {"service-b": free_port(), "service-c": free_port()}
    (data / "demo").mkdir(parents=True, exist_ok=True)
    (data / "demo" / "services.json").write_text(json.dumps({k: {"port": v} for k, v in ports.items()}))
    return {"OPSROOM_DEMO_PORT_B": str(ports["service-b"]), "OPSROOM_DEMO_PORT_C": str(ports["service-c"]),
            "OPSROOM_DEMO_INTERVAL": interval, "OPSROOM_DEMO_RETRY": "0.5s",
            "OPSROOM_DEMO_AUTO": "true" if auto else "false"}


def small_catalog(tmp: Path, **extra: Any) -> Path:
    """A one-environment catalog with a command runbook that echoes its argv as JSON."""
    data: dict[str, Any] = {
        "environments": [{"name": "prod", "protected": True}, {"name": "test"}],
        "systems": [{"name": "sys", "title": "Sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "checks": [{"name": "svc-cmd", "type": "command", "service": "svc", "interval": "60s",
                    "argv": [sys.executable, "-c", "print('OK - fine')"]}],
        "runbooks": [{
            "name": "echo-args", "approval": "none", "environment": "test",
            "parameters": {"text": {"type": "string"}},
            "steps": [{"command": [sys.executable, "-c",
                                   "import json,sys; open(sys.argv[1],'w').write(json.dumps(sys.argv[2:]))",
                                   str(tmp / "argv.json"), "{{ params.text }}"]}],
        }, {
            "name": "count", "approval": "none", "environment": "test",
            "parameters": {"n": {"type": "string", "pattern": "[0-9]{1,3}"}},
            "steps": [{"command": [sys.executable, "-c", "import sys; print(sys.argv[1])", "{{ params.n }}"]}],
        }, {
            "name": "deploy", "environment": "prod",
            "steps": [{"command": [sys.executable, "-c", "print('deployed')"]}],
        }],
        "rooms": [{"name": "ops"}],
        "aliases": [{"pattern": "echo {text}", "runbook": "echo-args"}],
        "users": [{"name": "you", "roles": ["operator"]}, {"name": "boss", "roles": ["approver"]},
                  {"name": "dev", "roles": ["viewer"]}, {"name": "lead", "roles": ["operator", "approver"]}],
    }
    data.update(extra)
    return write_catalog(tmp / "catalog", data)


async def token_for(rt: Runtime, user: str) -> str:
    return await access.create_token(rt, actor=SYSTEM, user=user, name="test")


async def link(rt: Runtime, platform: str, account_id: str, user: str, display_name: str | None = None) -> None:
    """Link a chat account to an opsroom user directly (what `link CODE` does, without the code)."""
    from opsroom.access import links

    await links.link_account(rt, platform=platform, account_id=account_id, display_name=display_name or user,
                             user=user)
