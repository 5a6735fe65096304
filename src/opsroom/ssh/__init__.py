"""SSH to the catalog's hosts: pinned host keys, client keys, a connection pool, remote argv.

Runbooks (`target: ssh`) and checks (`via:`) share it. Importing this package is cheap: asyncssh
(130 ms to import) loads only with keys, pool and inventory's first pool, when a host is used.
"""
