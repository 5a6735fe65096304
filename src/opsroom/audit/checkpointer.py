"""Making checkpoints: on demand, and in the server every N records or T seconds (docs/audit.md).

The server starts the writer with `start(rt)` and ends it with `await stop(rt)`; the CLI's
`opsroom audit checkpoint` calls `checkpoint_now` with no server running.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select

from opsroom.audit import checkpoints as cps
from opsroom.audit import keys
from opsroom.audit.chain import GENESIS
from opsroom.audit.models import AuditHeadRow

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from opsroom.config import Settings
    from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)
_HEAD = select(AuditHeadRow.seq, AuditHeadRow.hash).where(AuditHeadRow.id == 1)


def checkpoint_dir(settings: Settings) -> Path:
    return settings.audit_checkpoint_dir or settings.data / "audit-checkpoints"


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    return keys.load_or_create(keys.key_path(settings.data, settings.audit_key_file))


async def head(rt: Runtime) -> tuple[int, str]:
    """The committed head: the size and hash a checkpoint states."""
    async with rt.read() as session:
        row = (await session.execute(_HEAD)).first()
    return (row[0], row[1]) if row is not None else (0, GENESIS)


@dataclass
class Written:
    checkpoint: cps.Checkpoint
    path: Path
    git: bool = False
    syslog: bool = False
    problems: list[str] = field(default_factory=list)


async def checkpoint_now(rt: Runtime) -> Written:
    """Sign the current head and write it everywhere configured. The file is the record: a failed
    git commit or syslog send is reported in `problems`, the file stays."""
    settings = rt.settings
    key = signing_key(settings)
    size, digest = await head(rt)
    cp = cps.sign(key, log=settings.audit_log_name, size=size, head=digest, at=time.time())
    return await asyncio.to_thread(_write, settings, cp)


def _write(settings: Settings, cp: cps.Checkpoint) -> Written:
    directory = checkpoint_dir(settings)
    done = Written(cp, cps.write_dir(directory, cp))
    try:
        if cps.is_git_work_tree(directory):
            cps.git_commit(directory, done.path, cp)
            done.git = True
    except Exception as exc:
        done.problems.append(f"git commit in {directory} failed: {exc}")
    if settings.audit_syslog:
        try:
            cps.send_syslog(settings.audit_syslog, cp)
            done.syslog = True
        except Exception as exc:
            done.problems.append(f"syslog {settings.audit_syslog} failed: {exc}")
    for problem in done.problems:
        log.error("audit checkpoint sink failed", problem=problem, size=cp.size)
    return done


class Checkpointer:
    """Checks the head every second: a checkpoint once `every` records were added since the last,
    or once `seconds` passed with any added (an idle log is not re-signed for nothing)."""

    def __init__(self, rt: Runtime, *, every: int, seconds: float, poll: float = 1.0) -> None:
        self.rt, self.every, self.seconds, self.poll = rt, every, seconds, poll
        self.last_size: int | None = None
        self.last_at = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    async def tick(self) -> Written | None:
        size, _ = await head(self.rt)
        if self.last_size is None:
            self.last_size = self._newest_written()
        grown = size - self.last_size
        due = (self.every and grown >= self.every) or (
            self.seconds and grown > 0 and time.monotonic() - self.last_at >= self.seconds)
        if not due:
            return None
        done = await checkpoint_now(self.rt)
        self.last_size, self.last_at = done.checkpoint.size, time.monotonic()
        return done

    def _newest_written(self) -> int:
        """Where the last run left off, so a restart does not sign the same head again at once."""
        found = [cp.size for _, cp in cps.load_dir(checkpoint_dir(self.rt.settings))
                 if isinstance(cp, cps.Checkpoint)] if checkpoint_dir(self.rt.settings).is_dir() else []
        return max(found, default=0)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("audit checkpoint failed; retried")
            await asyncio.sleep(self.poll)


_running: dict[int, Checkpointer] = {}


def start(rt: Runtime) -> Checkpointer | None:
    """Start the writer in the server (none if both intervals are 0). The key is made or checked
    here, so a refused key file stops the server at start-up, not an hour later."""
    settings = rt.settings
    if not settings.audit_checkpoint_every and not settings.audit_checkpoint_seconds:
        return None
    signing_key(settings)
    writer = Checkpointer(rt, every=settings.audit_checkpoint_every, seconds=settings.audit_checkpoint_seconds)
    writer.task = asyncio.get_running_loop().create_task(writer.run(), name="audit-checkpoints")
    _running[id(rt)] = writer
    return writer


async def stop(rt: Runtime) -> None:
    """Stop the writer and sign the head once more, so what the server appended last is covered."""
    writer = _running.pop(id(rt), None)
    if writer is None or writer.task is None:
        return
    writer.task.cancel()
    await asyncio.gather(writer.task, return_exceptions=True)
    try:
        size, _ = await head(rt)
        if size != writer.last_size:
            await checkpoint_now(rt)
    except Exception:
        log.exception("final audit checkpoint failed")
