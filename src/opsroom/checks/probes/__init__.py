"""Probes by check type. Built-ins register here; plugins add to ``PROBES`` the same way."""

from __future__ import annotations

from typing import Any

from opsroom.checks.probes.base import Probe, ProbeContext, ProbeResult
from opsroom.checks.probes.command import CommandProbe, parse_output, parse_perfdata
from opsroom.checks.probes.http import HttpProbe
from opsroom.checks.probes.process import ProcessProbe
from opsroom.checks.probes.tcp import TcpProbe

PROBES: dict[str, Probe[Any]] = {p.type: p for p in (HttpProbe(), TcpProbe(), ProcessProbe(), CommandProbe())}


def register(probe: Probe[Any]) -> None:
    """Add or replace the probe for ``probe.type`` (the plugin hook's entry point)."""
    PROBES[probe.type] = probe


def get_probe(type: str) -> Probe[Any]:
    try:
        return PROBES[type]
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
