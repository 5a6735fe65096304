"""Errors the service layer raises; every door renders them, none invents its own."""

from __future__ import annotations


class OpsroomError(Exception):
    """Base for errors meant to be shown to a person (never a traceback)."""

    code = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class NotFound(OpsroomError):
    code = "not_found"


class Invalid(OpsroomError):
    code = "invalid"


class PermissionDenied(OpsroomError):
    code = "forbidden"


class Unauthenticated(OpsroomError):
    code = "unauthenticated"


class Conflict(OpsroomError):
    code = "conflict"


class TooManyAttempts(OpsroomError):
    """Refused before any work is done (login throttling); says when to try again."""

    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after
