"""Chat accounts linked to opsroom users (placeholder until the link table lands)."""

from __future__ import annotations

from opsroom.runtime import Runtime


async def linked_user(rt: Runtime, *, platform: str, account_id: str) -> str | None:
    """The opsroom user a platform account acts as, or None when it is not linked."""
    return None


async def accounts_of(rt: Runtime, *, platform: str, users: list[str]) -> list[tuple[str, str, str]]:
    """(user, account id, display name) of every account these users linked on a platform."""
    return []
