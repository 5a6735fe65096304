"""The extension contract: in-tree parts come in through the entry point, and a third-party
plugin registered the same way adds a chat platform a catalog can bind a room to."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from opsroom import plugins
from opsroom.catalog.errors import CatalogError
from opsroom.catalog.loader import load_catalog
from opsroom.chat.fake import FakeAdapter, FakeConfig
from opsroom.checks.probes import get_probe
from opsroom.hookspecs import AdapterSpec, hookimpl
from tests.factories import small_catalog
from tests.inprocess import booted


def test_the_built_ins_come_through_the_opsroom_entry_point() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="opsroom")}
    assert names.get("opsroom.builtins") == "opsroom.builtins_plugin"
    pm = plugins.manager()
    assert any(dist.project_name == "opsroom" for _plugin, dist in pm.list_plugin_distinfo())
    assert {"web", "fake", "slack", "teams", "mattermost", "matrix", "telegram", "irc", "xmpp"} <= set(
        plugins.chat_adapters())
    assert {"http", "tcp", "process", "command"} <= set(plugins.probe_types())
    assert get_probe("http").type == "http"
    assert "local" in plugins.runbook_targets()


class EchoConfig(FakeConfig):
    greeting: str = "hi"


class EchoAdapter(FakeAdapter):
    """A third party's platform: the fake with a setting of its own."""

    platform = "echo"
    Config = EchoConfig


@pytest.fixture
def third_party() -> Iterator[None]:
    module = types.ModuleType("opsroom_echo_plugin")

    @hookimpl
    def opsroom_chat_adapters() -> list[AdapterSpec]:
        return [AdapterSpec("echo", lambda: EchoAdapter, "a plugin's platform")]

    module.opsroom_chat_adapters = opsroom_chat_adapters  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    pm = plugins.manager()
    pm.register(module, name="opsroom-echo")
    try:
        yield
    finally:
        pm.unregister(name="opsroom-echo")
        del sys.modules[module.__name__]


async def test_a_plugin_adds_a_platform_a_room_binds_to(tmp_path: Path, third_party: None) -> None:
    catalog = small_catalog(tmp_path, platforms=[{"name": "echo", "greeting": "hello"}],
                            rooms=[{"name": "ops", "bind": ["echo:C1"]}])
    async with booted(tmp_path, catalog) as (rt, _fake):
        assert rt.rooms is not None
        adapter = rt.rooms.adapters["echo"]
        assert isinstance(adapter, EchoAdapter) and adapter.channels == ["C1"]


def test_a_platform_setting_the_plugin_does_not_know_is_refused_at_its_line(tmp_path: Path,
                                                                            third_party: None) -> None:
    catalog = small_catalog(tmp_path, platforms=[{"name": "echo", "greting": "typo"}])
    with pytest.raises(CatalogError) as err:
        load_catalog(catalog)
    text = str(err.value)
    assert "greting" in text and "catalog.yaml:" in text, text


def test_an_unknown_platform_type_and_an_unbound_platform_are_named(tmp_path: Path) -> None:
    catalog = small_catalog(tmp_path, platforms=[{"name": "chat", "type": "slak"}],
                            rooms=[{"name": "ops", "bind": ["nowhere:#ops"]}])
    with pytest.raises(CatalogError) as err:
        load_catalog(catalog)
    text = str(err.value)
    assert "no chat adapter of type 'slak'" in text and "slack" in text, text
    assert "platform 'nowhere'" in text, text
