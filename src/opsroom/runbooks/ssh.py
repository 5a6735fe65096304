"""The `ssh` runbook target: a runbook's steps on each of its hosts, fanned out.

Each host runs the runbook's steps in order: command steps there over SSH (opsroom.ssh), check
and http steps here, as in a local run (so "restart, then prove it answers" holds per host).
`parallel` hosts run at once, in the order listed; once more than `max_failures` hosts have
failed no further host is started (those running finish), as a rolling change should stop.
"""

from __future__ import annotations

import asyncio
import codecs
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opsroom.automation.templates import render
from opsroom.catalog.schema import Runbook, Step
from opsroom.runbooks.executor import StepFailed, Writer
from opsroom.ssh import inventory
from opsroom.ssh.keys import SshError
from opsroom.ssh.pool import SshPool

if TYPE_CHECKING:
    from opsroom.runbooks.executor import Executor

MAX_LINE = 64 * 1024  # as a local step's stream limit: a longer line is cut


class SshTarget:
    """Created once per executor: its pool keeps one connection per host across executions, and
    is the monitor's, so runbooks and `via:` checks share connections and `max_sessions`."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        rt = executor.rt
        owner = rt.monitor.ctx if rt.monitor is not None else executor
        self.pool: SshPool = inventory.pool_for(owner, lambda: rt.catalog.hosts)

    async def close(self) -> None:
        await self.pool.close()

    def hosts_of(self, runbook: Runbook, ctx: dict[str, Any]) -> list[str]:
        """The runbook's hosts in order: `hosts` (templates rendered), then its group's members."""
        catalog = self.executor.rt.catalog.hosts
        names: list[str] = []
        for entry in runbook.hosts:
            name = render(entry, ctx).strip() if "{{" in entry else entry
            if name not in catalog:
                known = ", ".join(sorted(catalog)) or "none"
                raise StepFailed(f"no host called {name!r} in the catalog (hosts: {known})")
            names.append(name)
        if runbook.group:
            members = [n for n, h in catalog.items() if runbook.group in h.groups]
            if not members:
                raise StepFailed(f"group {runbook.group!r} has no hosts in the catalog")
            names.extend(members)
        return list(dict.fromkeys(names))

    async def run(self, runbook: Runbook, ctx: dict[str, Any], out: Writer, execution_id: int) -> None:
        names = self.hosts_of(runbook, ctx)
        many = len(names) > 1
        failed: list[tuple[str, StepFailed]] = []
        slots = asyncio.Semaphore(runbook.parallel)
        running: list[asyncio.Task[None]] = []
        skipped: list[str] = []
        try:
            for i, name in enumerate(names):
                await slots.acquire()
                # Checked when a slot frees, before each start: a finished host's failure counts.
                if len(failed) > runbook.max_failures:
                    slots.release()
                    skipped = names[i:]
                    break
                task = asyncio.get_running_loop().create_task(
                    self._host(name, runbook, ctx, _HostOut(out, name if many else None), execution_id, failed))
                task.add_done_callback(lambda _t: slots.release())
                running.append(task)
            await asyncio.gather(*running)
        except BaseException:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise
        if not failed:
            return
        if not many:
            raise failed[0][1]
        detail = "; ".join(f"{name}: {exc}" for name, exc in failed)
        message = f"{len(failed)} of {len(names)} hosts failed ({detail})"
        if skipped:
            message += (f"; stopped after more than {runbook.max_failures} failed (max_failures), "
                        f"not started: {', '.join(skipped)}")
            out.write(f"not started (max_failures {runbook.max_failures} exceeded): {', '.join(skipped)}\n")
        raise StepFailed(message)

    async def _host(self, name: str, runbook: Runbook, ctx: dict[str, Any], out: _HostOut, execution_id: int,
                    failed: list[tuple[str, StepFailed]]) -> None:
        host = self.executor.rt.catalog.hosts[name]
        # Steps may name the host they run for: `{{ host.name }}`, `{{ host.address }}`.
        hctx = {**ctx, "host": {"name": name, "address": host.address, "user": host.user,
                                "groups": list(host.groups)}}
        try:
            for index, step in enumerate(runbook.steps):
                try:
                    if step.command is not None:
                        await self._command(name, runbook, step, hctx, out)
                    else:  # check and http steps run here, as in a local run
                        await self.executor._step(step, index, hctx, out, execution_id)
                except StepFailed as exc:
                    out.write(f"step {index + 1} ({step.label}) {exc.status}: {exc}\n")
                    if not step.continue_on_error:
                        raise
        except StepFailed as exc:
            failed.append((name, exc))
        finally:
            out.flush()

    async def _command(self, name: str, runbook: Runbook, step: Step, ctx: dict[str, Any], out: _HostOut) -> None:
        assert step.command is not None
        argv = [render(a, ctx) for a in step.command]
        # The remote side starts from `env -i`: PATH, locale, HOME, then only what the runbook names.
        env = {k: os.environ[k] for k in runbook.inherit_env if k in os.environ}
        env["OPSROOM_HOST"] = name  # which catalog host this is (a fan-out runs one argv everywhere)
        env.update({k: render(v, ctx) for k, v in step.env.items()})
        cwd = render(step.cwd, ctx) if step.cwd else None
        out.write(f"$ {' '.join(argv)}\n")
        lines = _Lines(out.write)
        try:
            async with asyncio.timeout(step.timeout):
                result = await self.pool.run(name, argv, env=env, cwd=cwd, on_output=lines.feed)
        except TimeoutError:
            raise StepFailed(f"timed out after {step.timeout:g}s (its process group on {name} was killed)",
                             "timed_out") from None
        except SshError as exc:
            raise StepFailed(exc.message) from None
        finally:
            lines.close()
        if result.signal is not None:
            raise StepFailed(f"killed by signal {result.signal} on {name}")
        if result.code == 127:
            raise StepFailed(f"exit code 127 on {name}: {argv[0]!r} not found there?")
        if result.code != 0:
            raise StepFailed(f"exit code {result.code}" if result.code is not None else "no exit status")


class _HostOut:
    """One host's output: each line prefixed with its name when a run has several hosts."""

    def __init__(self, out: Writer, prefix: str | None) -> None:
        self.out, self.prefix = out, f"[{prefix}] " if prefix else ""

    def write(self, text: str) -> None:
        if self.prefix:
            text = "".join(self.prefix + line for line in text.splitlines(keepends=True))
        self.out.write(text)

    def flush(self) -> None:
        """Nothing of its own is held back: lines go through whole."""


class _Lines:
    """Remote bytes -> whole decoded lines (a host's lines never interleave mid-line)."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.partial = ""
        self.cut = False

    def feed(self, data: bytes) -> None:
        text = self.partial + self.decoder.decode(data)
        *whole, self.partial = text.split("\n")
        for line in whole:
            self._line(line + "\n")
        if len(self.partial) > MAX_LINE:
            if not self.cut:
                self.write("[output line too long: cut]\n")
            self.cut, self.partial = True, ""

    def _line(self, line: str) -> None:
        if self.cut:  # the rest of a line already reported as cut
            self.cut = False
            return
        self.write(line)

    def close(self) -> None:
        rest = self.partial + self.decoder.decode(b"", final=True)
        self.partial = ""
        if rest and not self.cut:
            self.write(rest + "\n")
