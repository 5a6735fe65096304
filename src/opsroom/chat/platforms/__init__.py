"""The chat platforms a catalog configures, built through the plugin contract.

A catalog-built adapter is constructed as `cls(name=..., config=..., rt=...)`: `name` is the
catalog's platform name (what bindings use), `config` its settings checked by `cls.Config`.
"""

from __future__ import annotations

from opsroom.chat.base import ChatAdapter
from opsroom.plugins import adapter_class
from opsroom.runtime import Runtime


def build_adapters(rt: Runtime) -> list[ChatAdapter]:
    adapters: list[ChatAdapter] = []
    for platform in rt.catalog.platforms.values():
        cls = adapter_class(platform.kind)
        config = cls.Config.model_validate(platform.settings)
        adapters.append(cls(name=platform.name, config=config, rt=rt))
    return adapters
