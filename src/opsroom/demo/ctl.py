"""Start/stop/status of the demo services; what the demo runbooks run (argv, no shell)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _state(data: Path) -> dict[str, dict[str, int]]:
    path = data / "demo" / "services.json"
    if not path.exists():
        sys.exit(f"no demo services are configured under {path.parent} (start `opsroom demo` first)")
    services: dict[str, dict[str, int]] = json.loads(path.read_text())
    return services


def _pid(data: Path, name: str) -> int | None:
    pidfile = data / "demo" / f"{name}.pid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _reaped(pid: int) -> bool:
    """True once `pid`, a child of this process (the demo started it), has exited and been reaped:
    until then it is a zombie that `kill(pid, 0)` still finds, and stop() would wait it out."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False  # not ours: its own parent (or init) reaps it


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(data: Path, name: str) -> int:
    services = _state(data)
    if name not in services:
        print(f"unknown demo service {name!r}; known: {', '.join(sorted(services))}", file=sys.stderr)
        return 2
    port = services[name]["port"]
    pid = _pid(data, name)
    if pid is not None and _listening(port):
        print(f"{name} is already running (pid {pid})")
        return 0
    log = open(data / "demo" / f"{name}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "opsroom.demo.service", "--name", name, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (data / "demo" / f"{name}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _listening(port):
            print(f"started {name} (pid {proc.pid}) on 127.0.0.1:{port}")
            return 0
        if proc.poll() is not None:
            print(f"{name} exited with code {proc.returncode}; see {log.name}", file=sys.stderr)
            return 1
        time.sleep(0.02)
    print(f"{name} did not listen on port {port} within 10 s", file=sys.stderr)
    return 1


def stop(data: Path, name: str) -> int:
    _state(data)
    pid = _pid(data, name)
    if pid is None:
        print(f"{name} is not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if _reaped(pid) or _pid(data, name) is None:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
    print(f"stopped {name} (pid {pid})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="opsroom.demo.ctl")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("OPSROOM_DATA", ".")))
    ap.add_argument("action", choices=["start", "stop", "restart", "status"])
    ap.add_argument("service")
    args = ap.parse_args(argv)
    if args.action == "start":
        return start(args.data, args.service)
    if args.action == "stop":
        return stop(args.data, args.service)
    if args.action == "restart":
        stop(args.data, args.service)
        return start(args.data, args.service)
    pid = _pid(args.data, args.service)
    print(f"{args.service} is {f'running (pid {pid})' if pid else 'not running'}")
    return 0 if pid else 3


if __name__ == "__main__":
    sys.exit(main())
