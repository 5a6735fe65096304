"""JSON shapes of the access API: users and tokens (never a hash, never a token's value)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from opsroom.web.apitypes import UtcTime


class BindingOut(BaseModel):
    """A role held in one environment (and system) only; `roles` are held everywhere."""

    role: str
    environment: str
    system: str | None = None


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    display_name: str | None
    roles: list[str]
    bindings: list[BindingOut] = []
    disabled: bool
    source: str


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    user: str
    created_at: UtcTime
    last_used_at: UtcTime | None
    revoked: bool


class LinkCodeOut(BaseModel):
    """A one-time code, shown once: the person types `link CODE` on the chat platform before `expires_at`."""

    code: str
    expires_at: UtcTime
    how: str


class LinkOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    platform: str
    account_id: str
    display_name: str
    user: str
    created_at: UtcTime


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$",
                      description="what the token is for, e.g. `laptop` or `ci`")
    user: str | None = Field(default=None, max_length=64,
                             description="whose token; default yourself (another user's needs user.manage)")


class TokenCreatedOut(BaseModel):
    """The token's value, shown in this answer only: the server keeps its hash."""

    user: str
    name: str
    token: str


class MeOut(BaseModel):
    """The caller, as the server sees it."""

    name: str
    roles: list[str]
    permissions: list[str] = Field(description="`*`: every permission")


class GroundOut(BaseModel):
    """One of the user's roles or bindings, and what it says about the asked action."""

    role: str
    environment: str | None  # None: unscoped (every environment)
    system: str | None
    grants: bool  # the role holds the permission
    covers: bool  # its scope covers the target's
    why: str


class ExplainOut(BaseModel):
    """`opsroom access explain USER ACTION TARGET`: allowed or denied, what decided it and why."""

    user: str
    action: str
    target: str
    permission: str
    environment: str | None
    system: str | None
    allowed: bool
    decided_by: str | None = Field(description="the role or binding that allows it; None when denied")
    why: str
    grounds: list[GroundOut]
