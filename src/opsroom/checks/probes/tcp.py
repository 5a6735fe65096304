"""TCP probe: can a connection be opened, and how fast.

It connects a bare non-blocking socket (watched by ``Connects``) and closes it:
no transport, protocol or stream objects are built for a connection that is
never used, which halves the CPU per check against ``asyncio.open_connection``
(measured in bench/check_throughput.py) and lets one core run thousands per second.

It closes with a reset (SO_LINGER 0), as the kubelet's probes do since
kubernetes/kubernetes#115143: a graceful close leaves the monitor's side in
TIME_WAIT for 60 s, and thousands of checks per second against one host:port
exhaust the ~28,000 ephemeral ports of that tuple.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import struct
import time
from typing import Any, ClassVar

from opsroom.catalog.schema import TcpCheck
from opsroom.checks.probes.base import Probe, ProbeContext, ProbeResult, elapsed_ms
from opsroom.checks.probes.connects import Connects

AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # struct linger {l_onoff=1, l_linger=0}


@functools.lru_cache(maxsize=4096)
def _literal(host: str, port: int) -> list[AddrInfo] | None:
    """An IP address needs no resolver round trip (getaddrinfo runs in a thread)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if ip.version == 4:
        return [(socket.AF_INET, socket.SOCK_STREAM, 0, "", (str(ip), port))]
    return [(socket.AF_INET6, socket.SOCK_STREAM, 0, "", (str(ip), port, 0, 0))]


async def connect(host: str, port: int, connects: Connects) -> None:
    """Open and close one connection; raises the last OSError if no address accepts."""
    infos = _literal(host, port) or await asyncio.get_running_loop().getaddrinfo(host, port,
                                                                                 type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind | socket.SOCK_NONBLOCK, proto)
        try:
            await connects.connect(sock, addr)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            return
        except OSError as exc:  # e.g. localhost: ::1 refused, 127.0.0.1 listening
            error = exc
        finally:
            sock.close()
    raise error if error is not None else OSError(f"no address for {host}")


class TcpProbe(Probe[TcpCheck]):
    type: ClassVar[str] = "tcp"

    async def probe(self, check: TcpCheck, ctx: ProbeContext) -> ProbeResult:
        target = f"{check.host}:{check.port}"
        start = time.perf_counter()
        try:
            await connect(check.host, check.port, ctx.connects)
        except ConnectionRefusedError:
            return ProbeResult("CRITICAL", f"connection refused ({target})", latency_ms=elapsed_ms(start),
                               down=True)
        except OSError as exc:  # no route, DNS failure, network unreachable: nothing reachable either
            reason = exc.strerror or str(exc) or type(exc).__name__
            return ProbeResult("CRITICAL", f"cannot connect to {target}: {reason}",
                               latency_ms=elapsed_ms(start), down=True)
        ms = elapsed_ms(start)
        return ProbeResult("OK", f"TCP connect to {target} in {ms:.0f} ms", latency_ms=ms,
                           perfdata={"time_ms": round(ms, 3)})
