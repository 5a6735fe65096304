from __future__ import annotations

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base, now


class UserRow(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(128))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)  # unscoped: in every environment
    # Scoped: [{"role", "environment", "system"?}], each role held there only (docs/access.md).
    bindings: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list, server_default="[]")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # 'catalog': reconciled with the catalog's users at every start; 'local': added by `opsroom user add`.
    source: Mapped[str] = mapped_column(String(16), default="local", server_default="local")
    # Who disabled the user: 'catalog' (removed from it; re-enabled if it comes back) or 'admin' (stays off).
    disabled_by: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float, default=now)


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    # sha256 of the token: a stolen database does not yield working tokens.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    last_used_at: Mapped[float | None] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class WebSessionRow(Base):
    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    expires_at: Mapped[float] = mapped_column(Float)


class ChatLinkRow(Base):
    """A chat account (platform = the adapter's name in the catalog) that acts as an opsroom user."""

    __tablename__ = "chat_links"
    # One account acts as one user at most; a user may link several accounts.
    __table_args__ = (UniqueConstraint("platform", "account_id", name="uq_chat_links_platform_account"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(255), default="")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class LinkCodeRow(Base):
    """A one-time code that links the chat account typing it to `user_id`."""

    __tablename__ = "link_codes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # sha256 of the code: whoever reads the store cannot link an account of their own with it.
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issued_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float)


class OidcIdentityRow(Base):
    """The IdP account (issuer + `sub`, never its changeable user name) a single sign-on user is."""

    __tablename__ = "oidc_identities"
    # One IdP account is one user; a user is one IdP account (a second `sub` cannot take it over).
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_oidc_identities_issuer_subject"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)  # as of the last sign-in (for audit questions)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    last_login_at: Mapped[float | None] = mapped_column(Float)
