"""JSON shapes of the access API: users and tokens (never a hash, never a token's value)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    display_name: str | None
    roles: list[str]
    disabled: bool
    source: str


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    user: str
    created_at: float
    last_used_at: float | None
    revoked: bool


class LinkCodeOut(BaseModel):
    """A one-time code, shown once: the person types `link CODE` on the chat platform before `expires_at`."""

    code: str
    expires_at: float
    how: str


class LinkOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    platform: str
    account_id: str
    display_name: str
    user: str
    created_at: float
