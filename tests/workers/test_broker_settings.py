"""Which broker an environment's steps use: per environment first, then the one for all, else none."""

from __future__ import annotations

import pytest

from opsroom.config import Settings
from opsroom.workers import queues


def test_a_broker_per_environment_wins_over_the_one_for_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSROOM_BROKERS", '{"prod": "amqp://p:secret@mq/opsroom"}')
    monkeypatch.setenv("OPSROOM_BROKER_URL", "amqp://all@mq/opsroom")
    settings = Settings()
    assert settings.broker_for("prod") == "amqp://p:secret@mq/opsroom"
    assert settings.broker_for("test") == "amqp://all@mq/opsroom"


def test_no_broker_means_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPSROOM_BROKERS", raising=False)
    monkeypatch.delenv("OPSROOM_BROKER_URL", raising=False)
    assert Settings().broker_for("prod") is None


def test_a_broker_url_is_shown_without_its_password() -> None:
    assert queues.shown_url("amqp://prod:s3cret@mq:5672/opsroom") == "amqp://prod:***@mq:5672/opsroom"
    assert "s3cret" not in queues.shown_url("amqp://prod:s3cret@mq/opsroom")
    assert queues.shown_url("redis://127.0.0.1:6379/3") == "redis://127.0.0.1:6379/3"


@pytest.mark.parametrize("name", ["prod", "eu-west.prod_2"])
def test_environment_names_a_worker_accepts(name: str) -> None:
    assert queues.ENVIRONMENT.match(name)


@pytest.mark.parametrize("name", ["", "-x", "a b", "prod$", "x" * 65, "pr\nod", "prod\n"])
def test_environment_names_a_worker_refuses(name: str) -> None:
    assert not queues.ENVIRONMENT.match(name)
