"""The plugin manager: the `opsroom` entry points, opsroom's own included, loaded once."""

from __future__ import annotations

import functools
from typing import Any

import pluggy

from opsroom import hookspecs
from opsroom.errors import Invalid
from opsroom.hookspecs import AdapterSpec, AlertSourceSpec, RunbookTargetSpec

ENTRY_POINT_GROUP = "opsroom"


@functools.lru_cache(maxsize=1)
def manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("opsroom")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    if not pm.get_plugin("opsroom.builtins"):
        # A checkout run without `pip install -e .` has no entry points: the built-ins still load.
        from opsroom import builtins_plugin

        pm.register(builtins_plugin, name="opsroom.builtins")
    return pm


def _flatten(results: list[list[Any]]) -> list[Any]:
    # pluggy calls the newest registration first; reversed, a later plugin overrides an earlier one.
    return [item for batch in reversed(results) for item in (batch or [])]


def chat_adapters() -> dict[str, AdapterSpec]:
    return {spec.kind: spec for spec in _flatten(manager().hook.opsroom_chat_adapters())}


def probe_types() -> dict[str, Any]:
    return {probe.type: probe for probe in _flatten(manager().hook.opsroom_probe_types())}


def alert_source_kinds() -> dict[str, AlertSourceSpec]:
    return {spec.kind: spec for spec in _flatten(manager().hook.opsroom_alert_source_kinds())}


def runbook_targets() -> dict[str, RunbookTargetSpec]:
    return {spec.kind: spec for spec in _flatten(manager().hook.opsroom_runbook_targets())}


def adapter_class(kind: str) -> Any:
    """The adapter class for a platform `type:`, imported now."""
    specs = chat_adapters()
    if kind not in specs:
        raise Invalid(f"no chat adapter of type {kind!r}", hint=f"known types: {', '.join(sorted(specs))}")
    return specs[kind].load()
