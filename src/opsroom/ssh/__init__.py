"""SSH to the catalog's hosts: pinned host keys, client keys, a connection pool, remote argv.

Runbooks (`target: ssh`) and checks (`via:`) share this. Probes are handed only their check,
so the host inventory they resolve `via:` against is published here by whoever holds the
catalog (the executor, on start); each ProbeContext gets a pool of its own.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

from opsroom.catalog.schema import Host
from opsroom.ssh.keys import SshError
from opsroom.ssh.pool import Exit, SshPool

_inventory: Callable[[], Mapping[str, Host]] = dict
_pools: weakref.WeakKeyDictionary[Any, SshPool] = weakref.WeakKeyDictionary()


def use_hosts(hosts: Callable[[], Mapping[str, Host]]) -> None:
    """Publish the catalog's hosts (a getter, so a reloaded catalog is seen) for `via:` checks."""
    global _inventory
    _inventory = hosts


def hosts() -> Mapping[str, Host]:
    return _inventory()


def pool_for(owner: Any) -> SshPool:
    """The pool of `owner` (a ProbeContext): one connection per host for all its checks."""
    pool = _pools.get(owner)
    if pool is None:
        pool = _pools[owner] = SshPool(hosts)
    return pool


async def close_pool(owner: Any) -> None:
    pool = _pools.pop(owner, None)
    if pool is not None:
        await pool.close()


__all__ = ["Exit", "SshError", "SshPool", "close_pool", "hosts", "pool_for", "use_hosts"]
