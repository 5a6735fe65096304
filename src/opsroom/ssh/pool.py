"""Connections to the catalog's hosts: one per host, reused, reconnected, sessions bounded.

Opening an SSH connection costs a key exchange and an authentication (tens of ms and a
process on the server); a step or a check opens only a channel on the host's connection.
At most `max_sessions` channels are open to a host at once, runbooks and checks alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, cast

import asyncssh
import structlog

from opsroom.catalog.schema import Host
from opsroom.ssh import remote
from opsroom.ssh.keys import PinnedKey, SshError, client_key, fingerprint, parse_host_key

T = TypeVar("T")

log = structlog.get_logger(__name__)
MAX_JUMPS = 8  # the loader refuses cycles; this bounds a catalog changed behind its back
KILL_TIMEOUT = 5.0
READ_CHUNK = 65536


class _PinnedClient(asyncssh.SSHClient):
    """Accepts exactly the pinned host key and remembers what the server presented."""

    def __init__(self, pinned: PinnedKey) -> None:
        self.pinned = pinned
        self.presented: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.presented = key
        return self.pinned.matches(key)


@dataclass
class _Link:
    conn: asyncssh.SSHClientConnection
    version: str  # the host's content hash: an edited host entry gets a new connection
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class Exit:
    """How a remote command ended: its exit status, or the signal that ended it."""

    code: int | None
    signal: str | None = None
    pgid: int | None = None  # the remote process group (its leader is the login shell)


class SshPool:
    def __init__(self, hosts: Callable[[], Mapping[str, Host]], *, idle: float = 300.0) -> None:
        self._hosts = hosts
        self.idle = idle
        self._links: dict[str, _Link] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._slots: dict[tuple[str, int], asyncio.Semaphore] = {}
        self.connects = 0  # connections opened (tests prove reuse with it)

    def host(self, name: str) -> Host:
        hosts = self._hosts()
        try:
            return hosts[name]
        except KeyError:
            known = ", ".join(sorted(hosts)) or "none are defined (add them under `hosts:`)"
            raise SshError(f"no host called {name!r} in the catalog; hosts: {known}") from None

    def slots(self, host: Host) -> asyncio.Semaphore:
        """The host's session limit, shared by everything that opens a channel to it."""
        key = (host.name, host.max_sessions)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = asyncio.Semaphore(host.max_sessions)
        return slot

    # --- connections --------------------------------------------------------

    async def connection(self, name: str, _depth: int = 0) -> asyncssh.SSHClientConnection:
        """The host's open connection, connecting (through its jump host) when there is none."""
        if _depth > MAX_JUMPS:
            raise SshError(f"host {name}: more than {MAX_JUMPS} jump hosts in a row (a cycle?)")
        host = self.host(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            self._sweep()
            link = self._links.get(name)
            if link is not None and not link.conn.is_closed() and link.version == host.content_hash:
                link.last_used = time.monotonic()
                return link.conn
            if link is not None:
                self._drop(name, link.conn)
            tunnel = await self.connection(host.jump, _depth + 1) if host.jump else None
            conn = await _connect(host, tunnel)
            self.connects += 1
            self._links[name] = _Link(conn, host.content_hash)
            return conn

    def _drop(self, name: str, conn: asyncssh.SSHClientConnection) -> None:
        link = self._links.get(name)
        if link is not None and link.conn is conn:
            del self._links[name]
        conn.close()

    def _sweep(self) -> None:
        """Close connections nobody used for `idle` seconds (and never a jump host in use)."""
        now = time.monotonic()
        for name, link in list(self._links.items()):
            if now - link.last_used > self.idle:
                self._drop(name, link.conn)

    async def close(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            link.conn.close()
        for link in links:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.conn.wait_closed(), 2)

    async def _process(self, name: str, command: str) -> asyncssh.SSHClientProcess[bytes]:
        """A channel running `command`; one fresh connection is tried when the kept one broke."""
        for attempt in (1, 2):
            conn = await self.connection(name)
            try:
                return await conn.create_process(command, encoding=None)
            except (asyncssh.ChannelOpenError, asyncssh.DisconnectError, ConnectionError) as exc:
                self._drop(name, conn)
                if attempt == 2:
                    reason = getattr(exc, "reason", "") or type(exc).__name__
                    raise SshError(f"host {name}: cannot open a session: {reason}") from None
        raise AssertionError("unreachable")

    # --- commands -------------------------------------------------------------

    async def run(self, name: str, argv: list[str], *, env: Mapping[str, str] | None = None,
                  cwd: str | None = None, on_output: Callable[[bytes], None]) -> Exit:
        """Run argv on the host, output to `on_output` as it comes; cancelled -> its group is killed.

        The caller bounds the time (asyncio.timeout); cancelling kills the remote process group.
        """
        try:
            command = remote.script(argv, env, cwd)
        except ValueError as exc:
            raise SshError(f"cannot run {argv[0] if argv else 'it'!r} on host {name}: {exc}") from None

        async def pump(proc: asyncssh.SSHClientProcess[bytes]) -> None:
            while chunk := await proc.stdout.read(READ_CHUNK):
                on_output(chunk)

        result, _ = await self._session(name, command, pump)
        return result

    async def capture(self, name: str, command: str, *, limit: int = 1 << 20) -> tuple[Exit, bytes, bytes]:
        """Run a prepared remote script (a check's); stdout and stderr, bounded. Cancel kills its group."""

        async def both(proc: asyncssh.SSHClientProcess[bytes]) -> tuple[bytes, bytes]:
            # Both at once: a plugin blocked on a full stderr would never close its stdout.
            out, err = await asyncio.gather(_read_all(proc.stdout, limit), _read_all(proc.stderr, limit))
            return out, err

        result, (out, err) = await self._session(name, command, both)
        return result, out, err

    async def _session(self, name: str, command: str,
                       body: Callable[[asyncssh.SSHClientProcess[bytes]], Awaitable[T]]) -> tuple[Exit, T]:
        """One remote script under the host's session limit: its first stderr line is its process
        group id, `body` reads the rest; anything that stops it (a cancel, a timeout) kills the group."""
        async with self.slots(self.host(name)):
            proc = await self._process(name, command)
            pgid: int | None = None
            try:
                first = await proc.stderr.readline()
                pgid = int(first) if first.strip().isdigit() else None
                got = await body(proc)
                await proc.wait()
            except BaseException:
                await asyncio.shield(self._kill(name, proc, pgid))
                raise
            finally:
                self._used(name)
            result = _exit(proc)
            result.pgid = pgid
            return result, got

    def _used(self, name: str) -> None:
        link = self._links.get(name)
        if link is not None:
            link.last_used = time.monotonic()

    async def _kill(self, name: str, proc: asyncssh.SSHClientProcess[bytes], pgid: int | None) -> None:
        """Kill the step's remote process group on a channel of its own, then close its channel."""
        try:
            if pgid is not None:
                # On the step's own connection: the group id means nothing on another one's host.
                conn = cast(asyncssh.SSHClientConnection, proc.channel.get_connection())
                # Outside the session limit: the kill must not wait behind the sessions it frees.
                await asyncio.wait_for(conn.run(remote.kill_script(pgid), check=False), KILL_TIMEOUT)
            else:  # it never said its pid: the signal request reaches at least the shell
                proc.send_signal("KILL")
        except (asyncssh.Error, OSError, TimeoutError, SshError) as exc:
            log.warning("could not kill a remote process group", host=name, pgid=pgid, error=str(exc))
        finally:
            proc.close()


async def _read_all(stream: asyncssh.SSHReader[bytes], limit: int) -> bytes:
    """Everything until EOF, keeping the first `limit` bytes (the rest is read and dropped)."""
    out = bytearray()
    while chunk := await stream.read(READ_CHUNK):
        if len(out) < limit:
            out += chunk[: limit - len(out)]
    return bytes(out)


def _exit(proc: asyncssh.SSHClientProcess[bytes]) -> Exit:
    if proc.exit_signal is not None:
        return Exit(None, proc.exit_signal[0])
    return Exit(proc.exit_status)


async def _connect(host: Host, tunnel: asyncssh.SSHClientConnection | None) -> asyncssh.SSHClientConnection:
    try:
        pinned = parse_host_key(host.host_key)
    except ValueError as exc:
        raise SshError(f"host {host.name}: {exc}") from None
    key = client_key(host)
    client = _PinnedClient(pinned)
    where = f"{host.address}:{host.port}" + (f" through {host.jump}" if host.jump else "")
    try:
        return await asyncio.wait_for(asyncssh.connect(
            host.address, host.port, tunnel=tunnel if tunnel is not None else (),
            username=host.user, client_factory=lambda: client,
            # The pinned key only: never ~/.ssh/known_hosts, an agent, ~/.ssh/config or GSS.
            known_hosts=([pinned.key] if pinned.key is not None else [], [], []),
            x509_trusted_certs=None, client_keys=[key], agent_path=None, config=[], gss_host=None,
            preferred_auth="publickey", password=None, kbdint_auth=False,
            keepalive_interval=30, keepalive_count_max=3), host.connect_timeout)
    except asyncssh.HostKeyNotVerifiable:
        presented = (f"{fingerprint(client.presented)} ({client.presented.get_algorithm()})"
                     if client.presented is not None else "a key that could not be read")
        raise SshError(
            f"host {host.name} ({where}) presented host key {presented}, but the catalog pins "
            f"{pinned.fingerprint}: refused (a changed key may be a machine in the middle). If the host "
            f"was reinstalled, check its new key out of band and update host_key") from None
    except asyncssh.KeyExchangeFailed as exc:
        algorithm = pinned.key.get_algorithm() if pinned.key is not None else "pinned"
        raise SshError(f"host {host.name} ({where}): key exchange failed ({exc.reason}); it may offer no "
                       f"{algorithm} host key, which is what the catalog pins ({pinned.fingerprint})") from None
    except asyncssh.PermissionDenied:
        raise SshError(f"host {host.name} ({where}) refused the client key for user {host.user}: is its "
                       "public half in that user's authorized_keys?") from None
    except TimeoutError:
        raise SshError(f"host {host.name} ({where}): no SSH connection within "
                       f"{host.connect_timeout:g}s (connect_timeout)") from None
    except asyncssh.Error as exc:
        raise SshError(f"host {host.name} ({where}): SSH failed: {exc.reason}") from None
    except OSError as exc:
        raise SshError(f"host {host.name} ({where}): cannot connect: {exc.strerror or exc}") from None

