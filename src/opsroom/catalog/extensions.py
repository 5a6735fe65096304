"""Settings of catalog objects that belong to a plugin (a chat platform, an alert source), each
checked by its plugin's own pydantic Config and reported at file:line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ValidationError

from opsroom.catalog.catalog import Catalog, Location
from opsroom.catalog.errors import did_you_mean

Problem = tuple[Location | None, str, str]


def _check(cat: Catalog, kind: str, name: str, config: type[BaseModel], settings: dict[str, Any],
           docs: str) -> Iterator[Problem]:
    try:
        config.model_validate(settings)
    except ValidationError as exc:
        for err in exc.errors():
            path = tuple(str(p) for p in err["loc"])
            field_name = ".".join(path) or "settings"
            yield cat.locate(kind, name, *path), f"{kind.replace('_', ' ')} '{name}': {field_name}: {err['msg']}", docs


def _unknown(cat: Catalog, kind: str, name: str, field: str, value: str, known: list[str], what: str) -> Problem:
    return (cat.locate(kind, name, field), f"{kind.replace('_', ' ')} '{name}': no {what} of type '{value}'",
            did_you_mean(value, known) + f"known types: {', '.join(known)}")


def plugin_settings_problems(cat: Catalog) -> Iterator[Problem]:
    from opsroom.plugins import alert_source_kinds, chat_adapters

    adapters = chat_adapters()
    for n, platform in cat.platforms.items():
        spec = adapters.get(platform.kind)
        if spec is None:
            yield _unknown(cat, "platform", n, "type" if platform.type else "name", platform.kind,
                           sorted(adapters), "chat adapter")
            continue
        yield from _check(cat, "platform", n, spec.load().Config, platform.settings,
                          f"see docs/chat.md for the settings of a {platform.kind} platform")
    sources = alert_source_kinds()
    for n, source in cat.alert_sources.items():
        alert_spec = sources.get(source.kind)
        if alert_spec is None:
            yield _unknown(cat, "alert_source", n, "kind", source.kind, sorted(sources), "alert source kind")
            continue
        yield from _check(cat, "alert_source", n, alert_spec.load().Config, source.settings,
                          f"see docs/alerts.md for the settings of a {source.kind} source")
