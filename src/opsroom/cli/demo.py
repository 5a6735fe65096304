"""`opsroom demo`: System A's two services, a fresh store, the server, the room URL."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import platformdirs
from rich.console import Console

from opsroom import logs
from opsroom.demo import ctl
from opsroom.store import lease

DEMO_PASSWORDS = {"you": "you-demo-pw", "boss": "boss-demo-pw", "dev": "dev-demo-pw"}
CATALOG = Path(__file__).resolve().parent.parent / "demo" / "catalog"
out = Console()


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_demo(*, host: str, port: int, outage: bool, auto: bool, data: Path | None,
             catalog: Path | None = None) -> None:
    import uvicorn

    from opsroom.config import Settings
    from opsroom.web.app import create_app
    from opsroom.web.security import WS_MAX_FRAME

    data = data or Path(platformdirs.user_data_dir("opsroom")) / "demo"
    # Before the clean start below: a demo already running on this directory keeps its data.
    problem = lease.preflight(f"sqlite:///{data / 'opsroom.db'}") if data.exists() else None
    if problem:
        Console(stderr=True, soft_wrap=True).print(f"error: {problem}", markup=False, highlight=False)
        raise SystemExit(2)
    # A demo starts clean: yesterday's incident should not be in today's room.
    if data.exists():
        shutil.rmtree(data)
    (data / "demo").mkdir(parents=True)
    port_b = int(os.environ.get("OPSROOM_DEMO_PORT_B", "18081"))
    port_c = int(os.environ.get("OPSROOM_DEMO_PORT_C", "18082"))
    for p in (port, port_b, port_c):
        if not _free(p):
            out.print(f"[red]port {p} is in use[/red]; stop what uses it or set OPSROOM_PORT / "
                      "OPSROOM_DEMO_PORT_B / OPSROOM_DEMO_PORT_C")
            raise SystemExit(2)
    os.environ["OPSROOM_DEMO_PORT_B"], os.environ["OPSROOM_DEMO_PORT_C"] = str(port_b), str(port_c)
    os.environ["OPSROOM_DEMO_AUTO"] = "true" if auto else os.environ.get("OPSROOM_DEMO_AUTO", "false")
    (data / "demo" / "services.json").write_text(json.dumps({"service-b": {"port": port_b},
                                                             "service-c": {"port": port_c}}))
    for name in ("service-b", "service-c"):
        if ctl.start(data, name) != 0:
            raise SystemExit(1)
    settings = Settings(data=data, catalog=catalog or CATALOG, host=host, port=port, demo=True)
    # The server's logging: plain tracebacks, no locals, every line masked (uvicorn's own
    # level below keeps its access log out of the demo's terminal).
    logs.configure("info")
    app = create_app(settings, passwords=DEMO_PASSWORDS)
    url = f"http://{host}:{port}/rooms/ops"
    out.print(f"\n[bold]opsroom demo[/bold] — System A is service-b (:{port_b}) + service-c (:{port_c})")
    out.print("demo-only passwords: " + ", ".join(f"{u} / {p}" for u, p in DEMO_PASSWORDS.items()))
    out.print(f"room: [link={url}]{url}[/link]  (API docs: http://{host}:{port}/docs)")
    if auto:
        out.print("rule recover-service-b is ON: service-b will be restarted with no human")
    if outage:
        out.print("service-b will be killed in 15 s")

    async def main() -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", log_config=None,
                                ws="websockets-sansio", ws_max_size=WS_MAX_FRAME)
        srv = uvicorn.Server(config)
        killer = asyncio.get_running_loop().create_task(_outage(data)) if outage else None
        try:
            await srv.serve()
        finally:
            if killer is not None:
                killer.cancel()

    # uvicorn restores the default SIGTERM handler after its graceful shutdown and re-raises
    # the signal; with the default the process dies before the services below are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        asyncio.run(main())
    except SystemExit:
        if app.state.refused:  # explained by uvicorn's log already; exit as the preflight does
            raise SystemExit(2) from None
        raise
    finally:
        for name in ("service-b", "service-c"):
            ctl.stop(data, name)


async def _outage(data: Path) -> None:
    await asyncio.sleep(15)
    pid = ctl._pid(data, "service-b")
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        out.print("service-b killed (outage)")
