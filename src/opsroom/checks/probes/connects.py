"""TCP connects for thousands of checks a second, on one epoll registered with the loop once."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
from typing import Any


class Connects:
    """Non-blocking connects watched by one epoll that is registered with the event loop once.

    ``loop.sock_connect`` registers and unregisters each socket with the loop's selector:
    a transport check, a SelectorKey, a Handle and two epoll_ctl calls per check, a third of
    the event loop's time at 5,000 TCP checks/s. Here each connect costs one epoll_ctl
    (EPOLLONESHOT), and one callback settles every connect that finished since the last.
    Closing a socket removes it from the epoll, so a connect cut off by its deadline leaves
    nothing behind.
    """

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._waiting: dict[int, tuple[socket.socket, asyncio.Future[None]]] = {}

    async def connect(self, sock: socket.socket, addr: tuple[Any, ...]) -> None:
        loop = asyncio.get_running_loop()
        if not hasattr(select, "epoll"):
            await loop.sock_connect(sock, addr)
            return
        err = sock.connect_ex(addr)
        if err == 0:
            return
        if err != errno.EINPROGRESS:
            raise OSError(err, os.strerror(err))
        if self._epoll is None:
            self._epoll = select.epoll()
            loop.add_reader(self._epoll.fileno(), self._ready)
        fd = sock.fileno()
        fut = loop.create_future()
        self._waiting[fd] = (sock, fut)
        try:
            self._epoll.register(fd, select.EPOLLOUT | select.EPOLLONESHOT)
            await fut
        finally:
            # Cancelled (the deadline) or done: forget it; the caller closes the socket.
            self._waiting.pop(fd, None)

    def _ready(self) -> None:
        assert self._epoll is not None
        for fd, _events in self._epoll.poll(0):
            entry = self._waiting.pop(fd, None)
            if entry is None:
                continue
            sock, fut = entry
            if fut.done():
                continue
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                fut.set_exception(ConnectionRefusedError(err, os.strerror(err)) if err == errno.ECONNREFUSED
                                  else OSError(err, os.strerror(err)))
            else:
                fut.set_result(None)

    def __len__(self) -> int:
        """Connects in progress."""
        return len(self._waiting)

    def close(self) -> None:
        if self._epoll is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                asyncio.get_running_loop().remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
