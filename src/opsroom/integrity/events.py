"""The event a detected change raises (the lead may move it into opsroom/events.py later).

Defined here, it is still an `Event` subclass: events.event_types() finds it once this module
is imported, so the event log reads its rows back in any process that imports opsroom.integrity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from opsroom.events import Event


@dataclass(kw_only=True)
class IntegrityChanged(Event):
    """Watched files differ from the accepted baseline (or the baseline's signature failed).

    `changes`: one dict per path: `path` (control characters escaped), `kinds` (content,
    permissions, owner, group, inode, symlink, type, size, links, mtime, touched, added, deleted,
    baseline), `old` / `new` (the facts that differ, or None), `diff` (a masked unified diff of a
    small text file, else None). `quarantined`: runbooks of protected environments that now
    refuse to run until the change is accepted (`opsroom integrity accept`).
    """

    type: ClassVar[str] = "integrity.changed"
    site: str
    found_by: str  # watch | scan | overflow | start | cli
    changes: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    baseline_ok: bool = True
    more: int = 0  # changes left out of this event (a mass change is summarised, not listed)
