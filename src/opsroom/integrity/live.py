"""What this process's integrity engine has heard from inotify and not judged yet.

The service's refusal reads it; the engine (monitor.py) registers itself here. A module of its
own so that the service never imports the engine (tests/test_layers.py: no circles).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from opsroom.runtime import Runtime


class Listening(Protocol):
    pending: set[str]  # paths inotify named, not judged yet
    judging: set[str]  # the batch being judged now
    rescan_due: bool  # after an overflow: nothing is known until the rescan ends


_running: weakref.WeakKeyDictionary[Runtime, Listening] = weakref.WeakKeyDictionary()


def register(rt: Runtime, engine: Listening) -> None:
    _running[rt] = engine


def unregister(rt: Runtime) -> None:
    _running.pop(rt, None)


def engine(rt: Runtime) -> Listening | None:
    return _running.get(rt)


def unrecorded(rt: Runtime, files: Iterable[str]) -> str | None:
    """A file of `files` that inotify named and this server has not judged yet (or, after an
    overflow, any of them): a run must not slip in between a change and its record."""
    heard = _running.get(rt)
    if heard is None:
        return None
    for f in files:
        if heard.rescan_due or f in heard.pending or f in heard.judging or os.path.dirname(f) in heard.pending:
            return f
    return None
