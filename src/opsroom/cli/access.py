"""`opsroom access explain USER ACTION TARGET`: a local admin command on the server host.

It reads the users and their role bindings from the store the server uses (as `opsroom user`
does) and answers through the service layer (access/explain.py), which audits the question.
The same answer is GET /api/v1/access/explain for a client with a token.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from opsroom.cli.admin import store
from opsroom.cli.common import CatalogOpt, DataOpt, app, local_admin, run
from opsroom.cli.terminal import write

access_app = typer.Typer(no_args_is_help=True, help="Who may do what, and why (local admin, on the server host).")
app.add_typer(access_app, name="access")


@access_app.command("explain")
def explain(
    user: Annotated[str, typer.Argument(help="the opsroom user asked about")],
    action: Annotated[str, typer.Argument(help="view | view-output | run | approve | deny | cancel | check")],
    target: Annotated[list[str], typer.Argument(help="RUNBOOK [SERVICE | name=value ...], a request or "
                                                     "execution number, or a check")],
    data: DataOpt = None, catalog: CatalogOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the answer as JSON")] = False,
) -> None:
    """Allowed or denied, which role or binding decides, and why (exit 1 when denied)."""
    from opsroom.access import explain as explaining

    async def body() -> explaining.ExplainOut:
        async with store(catalog, data) as rt:
            return await explaining.explain(rt, actor=local_admin(), user=user, action=action,
                                            target=" ".join(target))

    out = run(body)
    if as_json:
        write(json.dumps(out.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=True))
    else:
        where = f"environment {out.environment}" + (f", system {out.system}" if out.system else "") \
            if out.environment else "no environment"
        write(f"{'ALLOWED' if out.allowed else 'DENIED'}: {out.user} {out.action} {out.target} ({where})")
        write(f"  {out.why}")
        for g in out.grounds:
            scope = "unscoped" if g.environment is None else \
                f"on {g.environment}" + (f"/{g.system}" if g.system else "")
            mark = "+" if g.grants and g.covers else "-"
            has = "has" if g.grants else "lacks"
            write(f"  {mark} {g.role} {scope}: {has} {out.permission}; {g.why}")
    if not out.allowed:
        raise typer.Exit(1)
