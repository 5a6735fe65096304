"""IRC: an asyncio client of opsroom's own (see adapter.py for why)."""
