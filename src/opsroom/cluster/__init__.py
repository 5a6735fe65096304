"""Several servers and workers on one store: membership, named leases, shards (DESIGN 14)."""
