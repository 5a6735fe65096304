"""The Celery side of the workers: one app per broker, one queue per environment, the task's shape.

Every setting here is about not running a step twice and not losing one silently:
late acknowledgement (a task is acked after its step ended, so a worker killed mid-step
does not lose the message), no reject-on-worker-lost (the broker redelivers it, and the
redelivered copy finds its step claimed in the store: it is reported, never re-run), a
prefetch of one (a busy worker does not sit on the next step while another is idle).
Remote control, events, gossip and mingle are off: they need exchanges beyond the
environment's own, and a worker's credentials allow only `opsroom.<environment>`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import Celery  # type: ignore[import-untyped]
from kombu.entity import Exchange, Queue

TASK = "opsroom.run_step"
ENVIRONMENT = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def queue_name(environment: str) -> str:
    return f"opsroom.{environment}"


def queue(environment: str) -> Queue:
    """The environment's queue, bound to a direct exchange of the same name (one permission regex covers both)."""
    name = queue_name(environment)
    exchange = Exchange(name, type="direct", durable=True)  # type: ignore[no-untyped-call]
    return Queue(name, exchange, routing_key=name, durable=True)  # type: ignore[no-untyped-call]


def shown_url(url: str) -> str:
    """A broker URL fit for a message: its password replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{netloc}", parts.path, parts.query, parts.fragment))


def make_app(broker_url: str, *, environments: list[str] | None = None) -> Celery:
    """A Celery app on `broker_url`; a worker passes its one environment, a server none."""
    app = Celery("opsroom", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        broker_connection_timeout=3.0,
        broker_connection_retry_on_startup=True,
        # A publish to an unreachable broker fails within seconds: the step fails with a message.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5,
                                   "interval_max": 1.0},
        task_queues=[queue(env) for env in environments or ()],
        task_default_queue=queue_name(environments[0]) if environments else "opsroom.default",
        # Redis: a task not acked within this long is handed out again (its step is then claimed:
        # never re-run); longer than any step may run.
        # RabbitMQ: publisher confirms, so a publish the broker refuses (credentials) or drops
        # raises here instead of vanishing; a refused basic.publish is otherwise only logged there.
        broker_transport_options={"visibility_timeout": 6 * 3600,
                                  **({"confirm_publish": True} if broker_url.startswith(("amqp", "pyamqp")) else {})},
    )
    return app


def publish(app: Celery, *, environment: str, kwargs: dict[str, Any]) -> None:
    """Send a step's task to the environment's own exchange, never to amq.default: Celery would route
    by queue name through the default exchange, which a per-environment user may not write to."""
    q = queue(environment)
    app.send_task(TASK, kwargs=kwargs, exchange=q.exchange, routing_key=q.routing_key, declare=[q], retry=True)


def task_kwargs(*, step_id: int, token: str, execution_id: int, index: int, environment: str) -> dict[str, Any]:
    """What a task carries: names, never an argv (the worker rebuilds it from its catalog and the store)."""
    return {"step_id": step_id, "token": token, "execution_id": execution_id, "index": index,
            "environment": environment}
