"""ChatOps: adapters, the command grammar and router, room announcements."""
