"""A runbook step sent to a worker, and the output the worker streams back through the store."""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base


class WorkerStepRow(Base):
    """One command step of one execution, queued for a worker of its environment.

    Written `queued` by the server before the task is published; a worker claims it with a
    conditional UPDATE (queued -> running, its node id) before it spawns anything, so a
    redelivered or duplicated task finds it claimed and never runs the step a second time.
    `token` is random and travels in the task: a message forged on the queue names no row.
    """

    __tablename__ = "worker_steps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    execution_id: Mapped[int] = mapped_column(Integer, index=True)
    step: Mapped[int] = mapped_column(Integer)
    environment: Mapped[str] = mapped_column(String(64))
    token: Mapped[str] = mapped_column(String(64))
    # queued | running | succeeded | failed | timed_out | cancelled | interrupted
    status: Mapped[str] = mapped_column(String(16), index=True)
    worker: Mapped[str | None] = mapped_column(String(96))  # the claiming worker's node id
    queued_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)  # claimed
    spawned_at: Mapped[float | None] = mapped_column(Float)  # its process started (wall clock)
    finished_at: Mapped[float | None] = mapped_column(Float)
    pgid: Mapped[int | None] = mapped_column(Integer)
    pg_started: Mapped[str | None] = mapped_column(String(32))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # Set by the server to stop the step: 'term' (a person cancelled: SIGTERM, grace, SIGKILL)
    # or 'kill' (the server stops): the worker polls it while the step runs.
    cancel: Mapped[str | None] = mapped_column(String(8))

    __table_args__ = (UniqueConstraint("execution_id", "step", name="uq_worker_steps_execution_step"),)


class WorkerOutputRow(Base):
    """A chunk of a step's output, masked by the worker, read back in id order by the server."""

    __tablename__ = "worker_output"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
                                    autoincrement=True)
    step_id: Mapped[int] = mapped_column(Integer, index=True)
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(Float)
