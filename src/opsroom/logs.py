"""Logging for the server: one configuration, plain tracebacks, every line through the masker.

Unconfigured, structlog renders exceptions with rich and its local variables: passwords
read from the environment, parameters, tokens. Configured here, tracebacks never show
locals, structlog and stdlib loggers (uvicorn, sqlalchemy, asyncio, opsroom) share one
formatter, and the rendered line passes through the process-wide masker last, so a secret
known to opsroom cannot reach the log in any field, message or traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

import structlog
from structlog.typing import Processor

from opsroom.secrets.masking import mask

# Loggers whose libraries attach handlers of their own: they go through ours instead.
_ROUTED = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "sqlalchemy", "asyncio", "opsroom")
_HANDLER_NAME = "opsroom"


class MaskingFormatter(structlog.stdlib.ProcessorFormatter):
    """The rendered line, masked: the last step, so nothing added after it escapes the masker."""

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning, error or critical")
    return value


def configure(level: str | int = "info", *, json: bool | None = None, stream: IO[str] | None = None) -> None:
    """Configure structlog and stdlib logging once for this process (a second call replaces the first).

    JSON lines when the stream is not a terminal (files, journald, containers), a readable
    console line on one; both with plain tracebacks and no local variables.
    """
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
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level(level))
    for name in _ROUTED:
        routed = logging.getLogger(name)
        routed.handlers.clear()
        routed.propagate = True
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
    structlog.reset_defaults()
