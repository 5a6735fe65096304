"""`opsroom cluster status`: the servers and workers on the store, what each holds, their lag.

A remote command (DESIGN 8): GET /api/v1/cluster on any server, which reads the store for all.
"""

from __future__ import annotations

from typing import Any

import typer

from opsroom.cli.common import OutputOpt, ProfileOpt, ServerOpt, TokenOpt, app
from opsroom.cli.output import Column, show
from opsroom.cli.remote import api_client, calling, expect, output_format

cluster_app = typer.Typer(help="The servers and workers sharing one store (docs/cluster.md).", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


def _held(node: dict[str, Any]) -> str:
    parts = []
    if node.get("shards"):
        parts.append(f"{node['shards']} shards")
    parts.extend(str(n) for n in [*(node.get("chat") or []), *(node.get("consumers") or [])])
    return ", ".join(parts) or "-"


def _age(node: dict[str, Any]) -> str:
    age = node.get("heartbeat_age_s")
    return "-" if age is None else f"{float(age):.1f}s"


def _lag(node: dict[str, Any]) -> str:
    lag = node.get("lag_p99_s")
    return "-" if lag is None else f"{float(lag) * 1000:.0f}ms"


@cluster_app.command("status")
def status(server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
           output: OutputOpt = None) -> None:
    """Every server and worker: kind, host, pid, version, heartbeat age, what it holds (shards, chat
    connections, consumers), checks scheduled, scheduler lag p99. Exit 1 when no server is live."""
    with calling(), api_client(server, token, profile) as api:
        data = expect(api.get("/cluster"), "nodes", "live_servers")
    nodes = [n for n in data["nodes"] if isinstance(n, dict)]
    columns: list[Column] = [("node", "node"), ("kind", "kind"), ("state", "state"), ("host", "host"), ("pid", "pid"),
               ("version", "version"), ("heartbeat", _age), ("holds", _held),
               ("checks", lambda n: "-" if n.get("checks_scheduled") is None else int(n["checks_scheduled"])),
               ("lag p99", _lag)]
    fmt = output_format(output)
    if fmt.value == "table":
        show(nodes, fmt, columns)
        typer.echo(f"{data['live_servers']} live server(s) on {data.get('store')}"
                   + (f", {data['shards']} shards" if data.get("shards") else ""))
    else:
        show(data, fmt)
    raise typer.Exit(0 if data["live_servers"] else 1)
