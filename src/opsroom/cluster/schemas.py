"""JSON shapes of the cluster API (GET /api/v1/cluster)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class NodeOut(BaseModel):
    """A server or worker process, as the store's membership table knows it."""

    node: str = Field(description="host:pid:random, the id executions and leases name it by")
    kind: Literal["server", "worker"] | str
    host: str
    pid: int
    version: str
    environment: str | None = Field(description="a worker's environment (its queue); null for servers")
    state: Literal["live", "stopped", "dead"]
    heartbeat_age_s: float | None = Field(description="seconds since its last heartbeat, by the store's clock")
    checks_scheduled: float | None
    lag_p99_s: float | None = Field(description="its scheduler's lag, 99th percentile, in seconds")
    this: bool = Field(description="the server that answered")
    shards: int = Field(description="how many check shards it holds")
    shard_list: list[int]
    chat: list[str] = Field(description="chat platform connections it holds (chat:<name> leases)")
    consumers: list[str] = Field(description="singleton log consumers it runs (consumer:<name> leases)")


class ClusterOut(BaseModel):
    store: str = Field(description="sqlite (one server) or postgresql (a cluster)")
    shards: int = Field(description="check shards in all; 0 on SQLite, where the one server runs every check")
    live_servers: int
    nodes: list[NodeOut]
