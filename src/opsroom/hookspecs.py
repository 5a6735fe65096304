"""The extension contract: what a plugin package can add to opsroom, and how.

A plugin is a module with functions marked `@hookimpl`, named in the `opsroom` entry-point
group of its package (`[project.entry-points.opsroom] myplugin = "mypkg.plugin"`). opsroom's
own chat adapters and probes register through the same entry points as a third-party package
would (see pyproject.toml), so the contract is the one they prove. Every hook here is
documented in docs/plugins.md; tests/test_docs.py fails when one is not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from opsroom.chat.base import ChatAdapter
    from opsroom.checks.probes.base import Probe

hookspec = pluggy.HookspecMarker("opsroom")
hookimpl = pluggy.HookimplMarker("opsroom")


@dataclass(frozen=True)
class AdapterSpec:
    """A chat adapter kind. `load` imports the class only when a catalog configures it, so a
    server that uses one platform does not pay for the client libraries of all seven."""

    kind: str  # what a catalog's `platforms:` item names in `type:`
    load: Callable[[], type[ChatAdapter]]
    summary: str = ""


@dataclass(frozen=True)
class AlertSourceSpec:
    """A kind of alert sender (Alertmanager, Grafana, a signed webhook) the server accepts."""

    kind: str
    load: Callable[[], Any]
    summary: str = ""


@dataclass(frozen=True)
class RunbookTargetSpec:
    """Where a runbook step can run (this host, over SSH, on a worker)."""

    kind: str
    load: Callable[[], Any]
    summary: str = ""


@hookspec
def opsroom_chat_adapters() -> list[AdapterSpec]:  # type: ignore[empty-body]
    """Chat platforms this plugin adds, one AdapterSpec per `type:` a catalog can name."""


@hookspec
def opsroom_probe_types() -> list[Probe[Any]]:  # type: ignore[empty-body]
    """Probe instances for check types (`type: http` ...); a later plugin replaces a type."""


@hookspec
def opsroom_alert_source_kinds() -> list[AlertSourceSpec]:  # type: ignore[empty-body]
    """Kinds of inbound alert sources this plugin accepts."""


@hookspec
def opsroom_runbook_targets() -> list[RunbookTargetSpec]:  # type: ignore[empty-body]
    """Places a runbook step can be run on."""
