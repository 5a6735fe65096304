"""opsroom's own plugin: the in-tree chat adapters, probes, alert sources and runbook targets, registered
through the `opsroom` entry point exactly as a third-party package registers its own."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from opsroom.hookspecs import AdapterSpec, AlertSourceSpec, RunbookTargetSpec, hookimpl

# type: (module, class, what it is). Imported on first use only.
ADAPTERS: dict[str, tuple[str, str, str]] = {
    "web": ("opsroom.web.room", "WebAdapter", "the built-in web room"),
    "fake": ("opsroom.chat.fake", "FakeAdapter", "in-memory, for tests"),
    "slack": ("opsroom.chat.platforms.slack.adapter", "SlackAdapter", "Slack, Socket Mode and Block Kit"),
    "teams": ("opsroom.chat.platforms.teams.adapter", "TeamsAdapter", "Microsoft Teams, Bot Framework"),
    "mattermost": ("opsroom.chat.platforms.mattermost.adapter", "MattermostAdapter",
                   "Mattermost, WebSocket and REST"),
    "matrix": ("opsroom.chat.platforms.matrix.adapter", "MatrixAdapter", "Matrix client-server API"),
    "telegram": ("opsroom.chat.platforms.telegram.adapter", "TelegramAdapter", "Telegram Bot API"),
    "irc": ("opsroom.chat.platforms.irc.adapter", "IrcAdapter", "IRC with TLS and SASL"),
    "xmpp": ("opsroom.chat.platforms.xmpp.adapter", "XmppAdapter", "XMPP multi-user chat"),
}


def _loader(module: str, name: str) -> Callable[[], Any]:
    return lambda: getattr(importlib.import_module(module), name)


@hookimpl
def opsroom_chat_adapters() -> list[AdapterSpec]:
    return [AdapterSpec(kind, _loader(module, cls), summary) for kind, (module, cls, summary) in ADAPTERS.items()]


@hookimpl
def opsroom_probe_types() -> list[Any]:
    from opsroom.checks.probes.command import CommandProbe
    from opsroom.checks.probes.http import HttpProbe
    from opsroom.checks.probes.process import ProcessProbe
    from opsroom.checks.probes.synthetic import SyntheticProbe
    from opsroom.checks.probes.tcp import TcpProbe

    return [HttpProbe(), TcpProbe(), ProcessProbe(), CommandProbe(), SyntheticProbe()]


# kind: (module, class, what it is), as ADAPTERS.
ALERT_SOURCES: dict[str, tuple[str, str, str]] = {
    "alertmanager": ("opsroom.alerts.sources.alertmanager", "AlertmanagerSource",
                     "Prometheus Alertmanager webhook v4, bearer token; silences pushed back over API v2"),
    "grafana": ("opsroom.alerts.sources.grafana", "GrafanaSource",
                "Grafana unified alerting webhook, bearer token or HMAC signature"),
    "webhook": ("opsroom.alerts.sources.webhook", "WebhookSource",
                "any JSON sender, mapped with templates, HMAC-SHA256 over timestamp and body"),
}


@hookimpl
def opsroom_alert_source_kinds() -> list[AlertSourceSpec]:
    return [AlertSourceSpec(kind, _loader(module, cls), summary)
            for kind, (module, cls, summary) in ALERT_SOURCES.items()]


@hookimpl
def opsroom_runbook_targets() -> list[RunbookTargetSpec]:
    return [RunbookTargetSpec("local", _loader("opsroom.runbooks.executor", "Executor"),
                              "steps run as child processes of the server, on its host"),
            RunbookTargetSpec("ssh", _loader("opsroom.runbooks.ssh", "SshTarget"),
                              "command steps run on the runbook's hosts over SSH (pinned host keys), fanned out")]
