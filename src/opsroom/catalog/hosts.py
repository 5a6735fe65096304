"""Load-time checks of the host inventory and what refers to it, each at the file:line to edit.

Called from the loader's check_refs: hosts a runbook or check names exist, a jump host exists
and jumps form no cycle, the pinned host key reads, and a key file is 0600 before the first
connection needs it (a mistake found at 3 a.m. in a failed run is found late).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opsroom.catalog.catalog import Catalog
from opsroom.catalog.errors import did_you_mean

if TYPE_CHECKING:
    from opsroom.catalog.loader import _Loader


def check_hosts(loader: _Loader, cat: Catalog) -> None:
    if cat.hosts:  # asyncssh (130 ms to import) only for catalogs that have hosts
        _hosts(loader, cat)
    groups = sorted({g for h in cat.hosts.values() for g in h.groups})
    for n, rb in cat.runbooks.items():
        for i, entry in enumerate(rb.hosts):
            if "{{" not in entry:  # a templated host is only known when it runs
                loader.ref(cat, ("runbook", n, "hosts", str(i)), "runs on", "host", entry)
        if rb.group is not None and rb.group not in groups:
            loader.add(cat.locate("runbook", n, "group"),
                       f"runbook '{n}' runs on group '{rb.group}', which no host belongs to",
                       did_you_mean(rb.group, groups) +
                       (f"groups: {', '.join(groups)}" if groups else "add `groups: [NAME]` to hosts under `hosts:`"))
    for n, chk in cat.checks.items():
        loader.ref(cat, ("check", n, "via"), "runs via", "host", getattr(chk, "via", None))


def _hosts(loader: _Loader, cat: Catalog) -> None:
    from opsroom.ssh.keys import key_file_problem, mask_key_lines, parse_host_key

    for n, host in cat.hosts.items():
        if host.key is not None:
            mask_key_lines(host.key)
        loader.ref(cat, ("host", n, "jump"), "jumps through", "host", host.jump)
        loader.ref(cat, ("host", n, "environment"), "belongs to", "environment", host.environment)
        try:
            parse_host_key(host.host_key)
        except ValueError as exc:
            loader.add(cat.locate("host", n, "host_key"), f"host '{n}': {exc}",
                       f"print the key with `ssh-keyscan -p {host.port} {host.address}` on a network you trust "
                       "(or read /etc/ssh/ssh_host_ed25519_key.pub on the host) and paste it without the host name")
        problem = key_file_problem(host.key_file) if host.key_file is not None else None
        if problem is not None:
            loader.add(cat.locate("host", n, "key_file"), f"host '{n}': {problem}",
                       "the private key must be readable by its owner only, as ssh itself requires")
    jumps = {n: [h.jump] if h.jump else [] for n, h in cat.hosts.items()}
    loader.cycles(cat, "host", "jump", "jump through", jumps)
