from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base


class NodeRow(Base):
    """A server or worker process of the cluster; alive while its heartbeat is fresh."""

    __tablename__ = "cluster_nodes"
    node_id: Mapped[str] = mapped_column(String(96), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # server | worker
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    environment: Mapped[str | None] = mapped_column(String(64))  # a worker's queue
    version: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float, index=True)
    stopped_at: Mapped[float | None] = mapped_column(Float)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # what it holds, its lag


class LeaseRow(Base):
    """A named lease (a shard of checks, a chat platform connection, a singleton consumer).

    `epoch` grows by one at every change of holder: a fencing token that tells a holder which
    came back from a pause that it lost the lease in between.
    """

    __tablename__ = "cluster_leases"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(96))
    expires_at: Mapped[float] = mapped_column(Float)
    epoch: Mapped[int] = mapped_column(Integer)
    taken_at: Mapped[float] = mapped_column(Float)


class SystemHealthRow(Base):
    """A system's health as last announced, for the whole cluster: a system's checks run on several
    servers, and the one whose change flips this row (compare and set) announces it, once."""

    __tablename__ = "system_health"
    system: Mapped[str] = mapped_column(String(64), primary_key=True)
    healthy: Mapped[bool] = mapped_column(Boolean)
    changed_at: Mapped[float] = mapped_column(Float)
