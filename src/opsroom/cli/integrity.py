"""`opsroom integrity status | scan | accept [PATH...]`: local admin commands on the server host.

The watched files are this host's, so these run here (not over the API), open the store as the
other admin commands do and act as `local:<login>` through the service layer, which checks the
permission and audits. What they record (a change, an acceptance) the running server sees at its
next run request: the baseline and the open changes live in the store.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import BaseModel

from opsroom.cli.admin import store
from opsroom.cli.common import CatalogOpt, DataOpt, app, local_admin, run
from opsroom.cli.output import when
from opsroom.cli.terminal import write

if TYPE_CHECKING:
    from opsroom.access.identity import Actor
    from opsroom.runtime import Runtime

T = TypeVar("T")

integrity_app = typer.Typer(no_args_is_help=True, help="File integrity monitoring (local admin, on the server host).")
app.add_typer(integrity_app, name="integrity")

JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON")]


def _as_local_admin(catalog: Path | None, data: Path | None, call: Callable[[Runtime, Actor], Awaitable[T]]) -> T:
    """Run a service call on the store of this host's server, as `local:<login>`."""

    async def body() -> T:
        async with store(catalog, data) as rt:
            return await call(rt, local_admin())

    return run(body)


def _show(result: BaseModel, as_json: bool, lines: Callable[[], list[str]]) -> None:
    """The result as JSON for scripts, else as the lines for people (cleaned of escapes)."""
    if as_json:
        write(json.dumps(result.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=True))
        return
    for line in lines():
        write(line)


@integrity_app.command("status")
def status(data: DataOpt = None, catalog: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """The baseline, every change not accepted yet, and the runbooks it quarantines (exit 1 if any)."""
    from opsroom.integrity import service

    st = _as_local_admin(catalog, data, lambda rt, actor: service.status(rt, actor=actor))

    def lines() -> list[str]:
        head = "baseline OK" if st.baseline_ok else "baseline NOT TRUSTED (signature fails, missing or rolled back)"
        out = [f"{head}: site {st.site}, generation {st.generation}, {st.files} files, "
               f"accepted {when(st.updated_at)} by {st.updated_by or '-'}"]
        out += [f"  {c.path}: {', '.join(c.kinds)} (since {when(c.first_at)})" for c in st.changes]
        out += [] if st.changes else ["  no unaccepted changes"]
        return out + ([f"quarantined: {', '.join(st.quarantined)}"] if st.quarantined else [])

    _show(st, as_json, lines)
    if st.changes or not st.baseline_ok:
        raise typer.Exit(1)


@integrity_app.command("scan")
def scan(data: DataOpt = None, catalog: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """Rescan every watched file now; new changes are recorded and announced (exit 1 if any)."""
    from opsroom.integrity import service

    done = _as_local_admin(catalog, data, lambda rt, actor: service.scan(rt, actor=actor))
    what = "baseline made" if done.created else f"{done.new_changes} new change(s)"
    _show(done, as_json, lambda: [f"scanned {done.files} files in {done.seconds:.2f} s: {what}"
                                  + (f"; quarantined: {', '.join(done.quarantined)}" if done.quarantined else "")])
    for problem in done.problems:
        write(f"  not scanned: {problem}", stream=sys.stderr)
    if done.new_changes or not done.baseline_ok:
        raise typer.Exit(1)


@integrity_app.command("accept")
def accept(paths: Annotated[list[str] | None, typer.Argument(help="files or directories; none: everything")] = None,
           data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """Make the files as they are now the baseline (all, or PATH...): lifts their quarantine. Audited."""
    from opsroom.integrity import service

    done = _as_local_admin(catalog, data, lambda rt, actor: service.accept(rt, actor=actor, paths=paths or None))
    write(f"accepted {done.files} file(s) as baseline generation {done.generation} of {done.site}")
    for path in done.cleared:
        write(f"  cleared: {path}")
