"""Silences: typed here (`silence service-b 1h because deploy`), kept here, and pushed to every
sender that keeps silences of its own (Alertmanager API v2), so it stops notifying too; removing
one here expires it there. A sender that cannot be reached does not stop the silence here: the
answer says which sender did not get it.
"""

from __future__ import annotations

import re
import time
from typing import Any

import structlog
from sqlalchemy.orm import Session

from opsroom.access.identity import Actor
from opsroom.alerts.book import AlertBook, Silence, plain_label, silence_from_row
from opsroom.alerts.matchers import parse_matchers
from opsroom.alerts.models import SilenceRow
from opsroom.alerts.service import book
from opsroom.audit import service as audit
from opsroom.errors import Invalid, NotFound, OpsroomError
from opsroom.eventlog import log as eventlog
from opsroom.events import SilenceChanged
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)
MAX_SILENCE_S = 14 * 86400.0  # two weeks: anything longer is a config change, not a silence
MAX_REASON = 500


def _target(rt: Runtime, what: str) -> tuple[str | None, str | None, tuple[Any, ...]]:
    """(service, system, matchers) a silence names: a service, a system, or label matchers."""
    if re.search(r'[=~!]', what):
        try:
            matchers = parse_matchers(what)
        except ValueError as exc:
            raise Invalid(f"cannot read the matchers: {exc}",
                          hint='write e.g. `silence alertname="DiskFull" 1h because ...`') from None
        return None, None, matchers
    service, _ = rt.catalog.find_service(what)
    if service is not None:
        return service, None, ()
    system, close = rt.catalog.find_system(what)
    if system is not None:
        return None, system, ()
    close = rt.catalog.find_service(what)[1] + close
    raise NotFound(f"I don't know a service or system called {what[:64]!r}",
                   hint=(f"did you mean {' or '.join(map(repr, close[:3]))}? " if close else "")
                   + 'silence a service, a system, or label matchers such as alertname="DiskFull"')


def remote_matchers(rt: Runtime, b: AlertBook, source: str, s: Silence) -> list[dict[str, Any]] | None:
    """The silence as the sender's label matchers, or None when its mapping cannot be inverted."""
    if s.matchers:
        return [{"name": m.label, "value": m.value, "isRegex": m.is_regex, "isEqual": m.is_equal}
                for m in s.matchers]
    cfg = b.configs[source]
    services = [s.service] if s.service else rt.catalog.services_of_system(s.system) if s.system else []
    label = plain_label(cfg.service)
    if label is not None and services:
        regex = len(services) > 1
        value = "|".join(re.escape(v) for v in services) if regex else services[0]
        return [{"name": label, "value": value, "isRegex": regex, "isEqual": True}]
    label = plain_label(cfg.system)
    if label is not None and s.system is not None:
        return [{"name": label, "value": s.system, "isRegex": False, "isEqual": True}]
    return None


async def _push(rt: Runtime, b: AlertBook, s: Silence, actor: Actor) -> tuple[list[dict[str, Any]], list[str]]:
    from opsroom.alerts.alertmanager_api import AlertmanagerApi

    pushed: list[dict[str, Any]] = []
    failed: list[str] = []
    for name, kind in b.sources.items():
        api_url = kind.silence_api()
        if api_url is None:
            continue
        matchers = remote_matchers(rt, b, name, s)
        if matchers is None:
            failed.append(f"{name}: its `service:` mapping is not a plain label, so the silence cannot be "
                          "written as label matchers (silence by matchers instead)")
            continue
        api = AlertmanagerApi(api_url)
        try:
            remote_id = await api.create_silence(matchers=matchers, starts_at=s.starts_at, ends_at=s.ends_at,
                                                 created_by=f"opsroom:{actor.name}",
                                                 comment=f"{s.reason} (opsroom silence #{s.id})")
            pushed.append({"source": name, "api_url": api_url, "id": remote_id})
        except OpsroomError as exc:
            failed.append(f"{name}: {exc.message}")
        finally:
            await api.close()
    return pushed, failed


async def create(rt: Runtime, *, actor: Actor, what: str, duration_s: float, reason: str,
                 room: str | None = None) -> dict[str, Any]:
    """Quiet the alerts of a service, a system or label matchers for a while, here and at the senders."""
    actor.require("alert.silence", what="silence alerts")
    reason = " ".join(reason.split())
    if not reason:
        raise Invalid("a silence needs a reason", hint="write `silence service-b 1h because deploy`")
    if len(reason) > MAX_REASON:
        raise Invalid(f"the reason is {len(reason)} characters; at most {MAX_REASON}")
    if not 0 < duration_s <= MAX_SILENCE_S:
        raise Invalid("a silence lasts between a second and two weeks", hint="write e.g. 30m, 1h or 2d")
    service, system, matchers = _target(rt, what)
    b = book(rt)
    now = time.time()
    values = {"service": service, "system": system, "matchers": [str(m) for m in matchers], "reason": reason,
              "created_by": actor.name, "created_at": now, "starts_at": now, "ends_at": now + duration_s,
              "remote": []}

    def store(session: Session) -> SilenceRow:
        row = SilenceRow(**values)
        session.add(row)
        session.flush()
        audit.append_in(session, actor=actor, action="silence.create", target=f"silence:{row.id}",
                        details={"what": service or system or values["matchers"], "duration_s": duration_s,
                                 "reason": reason})
        return row

    row = await rt.transact(store)
    silence = silence_from_row(row)
    b.silences[silence.id] = silence
    pushed, failed = await _push(rt, b, silence, actor)
    if pushed:
        silence.remote = pushed
    if failed:
        log.warning("silence not pushed to every sender", silence=silence.id, failed=failed)
    ev = SilenceChanged(
        silence_id=silence.id, what=silence.what, by=actor.name, active=True, ends_at=silence.ends_at,
        reason=reason, system=system or (rt.catalog.services[service].system if service else None),
        pushed=[f"{p['source']}: {p['id']}" for p in pushed], failed=failed, room=room)
    # The event says where the silence was pushed: it is logged with that outcome, in one transaction.
    await rt.transact(lambda s: _set_remote(s, silence.id, pushed, ev, rt.node_id))
    rt.bus.publish(ev)
    return _view(silence) | {"failed": failed}


def _set_remote(session: Session, silence_id: int, remote: list[dict[str, Any]], ev: SilenceChanged,
                origin: str) -> None:
    if remote:
        row = session.get(SilenceRow, silence_id)
        if row is not None:
            row.remote = remote
    eventlog.append(session, ev, origin=origin)


async def remove(rt: Runtime, *, actor: Actor, silence_id: int, room: str | None = None) -> dict[str, Any]:
    """End a silence now, here and at every sender it was pushed to."""
    actor.require("alert.silence", what="remove silences")
    b = book(rt)
    now = time.time()

    def store(session: Session) -> SilenceRow:
        row = session.get(SilenceRow, silence_id)
        if row is None or row.expired_at is not None or row.ends_at <= now:
            raise NotFound(f"there is no active silence #{silence_id}", hint="`silences` lists the active ones")
        row.expired_at, row.expired_by = now, actor.name
        audit.append_in(session, actor=actor, action="silence.remove", target=f"silence:{silence_id}",
                        details={"what": row.service or row.system or row.matchers})
        return row

    row = await rt.transact(store)
    silence = b.silences.pop(silence_id, None) or silence_from_row(row)
    failed = await _expire_remote(row.remote or [])
    ev = SilenceChanged(
        silence_id=silence_id, what=silence.what, by=actor.name, active=False, ends_at=now, reason=row.reason,
        system=row.system or (rt.catalog.services[row.service].system if row.service in rt.catalog.services
                              else None),
        pushed=[f"{r['source']}: {r['id']}" for r in row.remote or []], failed=failed, room=room)
    await eventlog.emit(rt, ev)  # with the outcome at the senders, as for a new silence
    return _view(silence) | {"ends_at": now, "failed": failed}


async def _expire_remote(remote: list[dict[str, Any]]) -> list[str]:
    from opsroom.alerts.alertmanager_api import AlertmanagerApi

    failed = []
    for r in remote:
        api = AlertmanagerApi(r["api_url"])
        try:
            await api.expire_silence(r["id"])
        except OpsroomError as exc:
            failed.append(f"{r['source']}: {exc.message}")
        finally:
            await api.close()
    return failed


async def list_active(rt: Runtime, *, actor: Actor) -> list[dict[str, Any]]:
    actor.require("status.read", what="see silences")
    views = [_view(s) for s in sorted(book(rt).active_silences(), key=lambda s: s.id)]
    await audit.append_alone(rt, actor=actor, action="silence.list", target="silences",
                             details={"count": len(views)})
    return views


def _view(s: Silence) -> dict[str, Any]:
    return {"id": s.id, "what": s.what, "service": s.service, "system": s.system,
            "matchers": [str(m) for m in s.matchers], "reason": s.reason, "created_by": s.created_by,
            "starts_at": s.starts_at, "ends_at": s.ends_at,
            "pushed": [f"{r['source']}: {r['id']}" for r in s.remote]}

