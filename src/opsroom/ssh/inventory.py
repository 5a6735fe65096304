"""Which hosts `via:` checks resolve against, and their connection pools.

Probes are handed only their check, so the host inventory is published here by whoever holds
the catalog (the executor, when it starts); each ProbeContext gets a pool of its own, so a
check that runs every few seconds opens a channel, not a connection.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opsroom.catalog.schema import Host

if TYPE_CHECKING:
    from opsroom.ssh.pool import SshPool

_inventory: Callable[[], Mapping[str, Host]] = dict
_pools: weakref.WeakKeyDictionary[Any, SshPool] = weakref.WeakKeyDictionary()


def use_hosts(hosts: Callable[[], Mapping[str, Host]]) -> None:
    """Publish the catalog's hosts (a getter, so a reloaded catalog is seen) for `via:` checks."""
    global _inventory
    _inventory = hosts


def hosts() -> Mapping[str, Host]:
    return _inventory()


def pool_for(owner: Any, catalog_hosts: Callable[[], Mapping[str, Host]] | None = None) -> SshPool:
    """The pool of `owner` (the monitor's ProbeContext): one connection per host for all its
    checks, and for the runbooks of the same runtime, so `max_sessions` holds for both."""
    from opsroom.ssh.pool import SshPool

    pool = _pools.get(owner)
    if pool is None:
        pool = _pools[owner] = SshPool(catalog_hosts or hosts)
    return pool


async def close_pool(owner: Any) -> None:
    pool = _pools.pop(owner, None)
    if pool is not None:
        await pool.close()
