"""Which hosts `via:` checks resolve against, and their connection pools.

Probes are handed their check and the ProbeContext, whose `hosts` the monitor points at the
catalog; each ProbeContext gets a pool of its own, so a check that runs every few seconds opens
a channel, not a connection.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opsroom.catalog.schema import Host

if TYPE_CHECKING:
    from opsroom.ssh.pool import SshPool

_pools: weakref.WeakKeyDictionary[Any, SshPool] = weakref.WeakKeyDictionary()


def pool_for(owner: Any, catalog_hosts: Callable[[], Mapping[str, Host]] | None = None) -> SshPool:
    """The pool of `owner` (the monitor's ProbeContext): one connection per host for all its
    checks, and for the runbooks of the same runtime, so `max_sessions` holds for both."""
    from opsroom.ssh.pool import SshPool

    pool = _pools.get(owner)
    if pool is None:
        hosts: Callable[[], Mapping[str, Host]] = (catalog_hosts if catalog_hosts is not None
                                                   else getattr(owner, "hosts", dict))
        pool = _pools[owner] = SshPool(hosts)
    return pool


async def close_pool(owner: Any) -> None:
    pool = _pools.pop(owner, None)
    if pool is not None:
        await pool.close()
