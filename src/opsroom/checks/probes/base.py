"""The probe contract: run one check, always return a result, never raise."""

from __future__ import annotations

import asyncio
import functools
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import aiohttp
import structlog

from opsroom.checks.probes.connects import Connects
from opsroom.checks.probes.deadlines import Deadlines

log = structlog.get_logger(__name__)

C = TypeVar("C")
USER_AGENT = "opsroom-check/1"

# Many checks share few patterns, but re's own cache holds only 512 and 20,000
# checks could evict each other; a bigger cache keeps compiling off the hot path.
compile_regex = functools.lru_cache(maxsize=4096)(re.compile)


@dataclass(slots=True)
class ProbeResult:
    state: str  # OK | WARNING | CRITICAL | UNKNOWN
    output: str  # one line, what the room sees
    long_output: str = ""
    latency_ms: float = 0.0
    perfdata: dict[str, float] = field(default_factory=dict)
    down: bool = False  # the target could not be reached at all (refused, process absent)


class ProbeContext:
    """What probes share: one keep-alive HTTP session for all http checks.

    Created lazily inside the running loop (aiohttp binds a session to it) and
    closed by ``await ctx.close()``.
    """

    def __init__(self, *, limit: int = 1000, keepalive_timeout: float = 30.0) -> None:
        # limit bounds open sockets across all hosts; it should exceed the scheduler's
        # concurrency so the pool never becomes the hidden bottleneck.
        self.limit = limit
        self.keepalive_timeout = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None
        self.deadlines = Deadlines()
        self.connects = Connects()
        # The catalog's hosts, for `via:` checks (the monitor sets it; a reload is seen at once).
        self.hosts: Callable[[], Mapping[str, Any]] = dict

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.limit, limit_per_host=0,
                                             keepalive_timeout=self.keepalive_timeout, ttl_dns_cache=300)
            # No session-wide timeout: each probe enforces its own check.timeout.
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None), trust_env=False,
                headers={"User-Agent": USER_AGENT})  # so a service's access log can tell probes apart
        return self._session

    async def close(self) -> None:
        self.deadlines.close()
        self.connects.close()
        from opsroom.ssh.inventory import close_pool  # no SSH imports unless a host was used

        await close_pool(self)
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class Probe(ABC, Generic[C]):
    """One kind of check. Subclasses implement ``probe``; ``run`` adds the guarantees.

    ``run`` enforces ``check.timeout`` (CRITICAL "timed out after Xs") and turns
    any exception into UNKNOWN, so one broken probe can never take the
    scheduler down or leave a check without a result.
    """

    type: ClassVar[str]

    async def run(self, check: C, ctx: ProbeContext) -> ProbeResult:
        timeout = float(getattr(check, "timeout", 10.0))
        start = time.perf_counter()
        task = asyncio.current_task()
        assert task is not None
        token = ctx.deadlines.watch(task, asyncio.get_running_loop().time() + timeout)
        try:
            return await self.probe(check, ctx)
        except asyncio.CancelledError:
            # Ours (the deadline) unless someone else cancelled the task too: then theirs wins.
            if not ctx.deadlines.release(token) or task.uncancel() > 0:
                raise
            return ProbeResult("CRITICAL", f"timed out after {fmt_seconds(timeout)}",
                               latency_ms=elapsed_ms(start))
        except TimeoutError:
            return ProbeResult("CRITICAL", f"timed out after {fmt_seconds(timeout)}",
                               latency_ms=elapsed_ms(start))
        except Exception as exc:  # the contract: a probe never raises
            log.warning("probe failed", probe=self.type, check=getattr(check, "name", None), exc_info=True)
            return ProbeResult("UNKNOWN", f"{self.type} probe error: {type(exc).__name__}: {exc}",
                               latency_ms=elapsed_ms(start))
        finally:
            if ctx.deadlines.release(token):
                # Cancelled for the deadline, but the probe swallowed it and returned: withdraw our
                # request, or the task (a long-lived scheduler worker) stays marked as cancelling.
                task.uncancel()

    @abstractmethod
    async def probe(self, check: C, ctx: ProbeContext) -> ProbeResult:
        """Run the check once; may raise, ``run`` maps exceptions and the timeout."""


def first_line(text: str, limit: int = 500) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]
