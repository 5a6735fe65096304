"""Probes by check type, from the plugin contract (`opsroom_probe_types`): the built-ins register
through opsroom's own entry point exactly as a plugin's probes do."""

from __future__ import annotations

from typing import Any

from opsroom.checks.probes.base import Probe, ProbeContext, ProbeResult
from opsroom.checks.probes.command import CommandProbe, parse_output, parse_perfdata
from opsroom.checks.probes.http import HttpProbe
from opsroom.checks.probes.process import ProcessProbe
from opsroom.checks.probes.tcp import TcpProbe

PROBES: dict[str, Probe[Any]] = {}


def register(probe: Probe[Any]) -> None:
    """Add or replace the probe for ``probe.type`` in this process (tests; plugins use the hook)."""
    _loaded()
    PROBES[probe.type] = probe


def _loaded() -> dict[str, Probe[Any]]:
    if not PROBES:
        from opsroom.plugins import probe_types

        PROBES.update(probe_types())
    return PROBES


def get_probe(type: str) -> Probe[Any]:
    try:
        return _loaded()[type]
    except KeyError:
        known = ", ".join(sorted(PROBES))
        raise KeyError(f"no probe for check type {type!r}; known types: {known}") from None


__all__ = [
    "PROBES",
    "CommandProbe",
    "HttpProbe",
    "Probe",
    "ProbeContext",
    "ProbeResult",
    "ProcessProbe",
    "TcpProbe",
    "get_probe",
    "parse_output",
    "parse_perfdata",
    "register",
]
