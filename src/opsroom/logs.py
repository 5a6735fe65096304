"""Logging for the server: one configuration, plain tracebacks, every line through the masker.

Unconfigured, structlog renders exceptions with rich and its local variables: passwords
read from the environment, parameters, tokens. Configured here, tracebacks never show
locals, structlog and stdlib loggers (uvicorn, sqlalchemy, asyncio, opsroom) share one
formatter, and the rendered line passes through the process-wide masker last, so a secret
known to opsroom cannot reach the log in any field, message or traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import IO
from urllib.parse import unquote, urlsplit

import structlog
from structlog.typing import Processor

from opsroom.secrets.masking import MASK, mask, register, secret_name

# Loggers whose libraries attach handlers of their own: they go through ours instead.
_ROUTED = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "sqlalchemy", "asyncio", "opsroom")
# Loggers that print SQL statements with their parameters (password hashes, session data) at
# debug or info: kept at warning whatever the level, so `log_level = debug` is safe to turn on.
_STATEMENTS = ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "sqlalchemy.orm", "asyncpg")
_HANDLER_NAME = "opsroom"
# websockets' debug line for a frame, e.g. `< TEXT '{"type": "say", …}' [66 bytes]`.
_FRAME = re.compile(r"^([<>]) (TEXT|BINARY|CONT|CLOSE|PING|PONG) .*?(\[\d+ bytes(?:, continued)?\])?$", re.DOTALL)


_CREDENTIAL_HEADERS = frozenset({"cookie", "set-cookie", "authorization", "proxy-authorization", "x-csrf-token"})


class _WireDebug(logging.Filter):
    """websockets' debug lines show the handshake's headers and every frame. Headers carry session
    cookies and bearer tokens, and frames what people type, secrets included, before chat
    redaction has read them (so the masker cannot know them yet): credentials are replaced and
    a frame is logged by its kind and size only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG or not isinstance(record.msg, str) or record.msg[:2] not in ("< ", "> "):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg[2:] == "%s: %s" and len(args) == 2 and str(args[0]).lower() in _CREDENTIAL_HEADERS:
            record.args = (args[0], MASK)
            return True
        m = _FRAME.match(record.getMessage())
        if m:
            record.msg, record.args = f"{m.group(1)} {m.group(2)} {m.group(3) or ''}".rstrip(), ()
        return True


class MaskingFormatter(structlog.stdlib.ProcessorFormatter):
    """The rendered line, masked: the last step, so nothing added after it escapes the masker."""

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


TRACE = 5  # uvicorn's level below debug


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    if level.lower() == "trace":
        return TRACE
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning, error or critical")
    return value


def environment_secrets(environ: Mapping[str, str]) -> list[str]:
    """Values of variables whose names say they are secrets, and passwords inside URLs
    (OPSROOM_DATABASE_URL=postgresql://opsroom:PASSWORD@db/opsroom)."""
    found = [value for name, value in environ.items() if secret_name(name)]
    for value in environ.values():
        if "://" in value and "@" in value:
            with contextlib.suppress(ValueError):
                password = urlsplit(value).password
                if password:
                    found += [password, unquote(password)]
    return found


def configure(level: str | int = "info", *, json: bool | None = None, stream: IO[str] | None = None) -> None:
    """Configure structlog and stdlib logging once for this process (a second call replaces the first).

    JSON lines when the stream is not a terminal (files, journald, containers), a readable
    console line on one; both with plain tracebacks and no local variables. The server's own
    secrets from its environment are taught to the masker first.
    """
    register(*environment_secrets(os.environ))
    stream = stream if stream is not None else sys.stderr
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    plain = structlog.dev.plain_traceback
    renderer: Processor = (structlog.processors.JSONRenderer() if json else
                           structlog.dev.ConsoleRenderer(colors=False, exception_formatter=plain))
    formatter = MaskingFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            # The standard library's traceback text: frames and lines, never local variables.
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    handler.addFilter(_WireDebug())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level(level))
    for name in _ROUTED:
        routed = logging.getLogger(name)
        routed.handlers.clear()
        routed.propagate = True
        # Levels follow the root set above: a level or `disabled` left by an earlier set-up in
        # this process (uvicorn.Config sets its loggers' levels) would hide or let through lines.
        routed.setLevel(logging.NOTSET)
        routed.disabled = False
    for name in _STATEMENTS:
        logging.getLogger(name).setLevel(max(logging.WARNING, _level(level)))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def quiet(*names: str, level: str | int = "warning") -> None:
    """Raise the threshold of chatty loggers (the demo's access log) without touching the rest."""
    for name in names:
        logging.getLogger(name).setLevel(_level(level))


def reset() -> None:
    """Undo configure(): for tests that configure logging and must leave the process as it was."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    for name in _STATEMENTS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    structlog.reset_defaults()
