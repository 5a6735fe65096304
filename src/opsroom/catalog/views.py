"""JSON API: the catalog (its version, and reloading it)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from opsroom.catalog import service
from opsroom.web.deps import ApiActor, RuntimeDep

router = APIRouter(tags=["catalog"])


class CatalogOut(BaseModel):
    hash: str  # sha256 of the reviewed objects; `opsroom catalog validate` prints its first 12 characters
    loaded_at: datetime
    counts: dict[str, int]


class ChangeOut(BaseModel):
    added: list[str]
    removed: list[str]
    changed: list[str]


class ReloadOut(BaseModel):
    applied: bool = True
    old_hash: str
    catalog: CatalogOut
    summary: str  # e.g. "checks +1; rules ~1", or "no changes"
    changes: dict[str, ChangeOut]  # only the kinds that changed
    notes: list[str]  # what a reload cannot apply (chat platforms), or what people should know
    took_ms: float


class ProblemOut(BaseModel):
    file: str | None
    line: int | None
    column: int | None
    message: str
    hint: str


class RefusedOut(BaseModel):
    detail: str  # the problems rendered as `catalog validate` prints them
    code: str
    hint: str
    problems: list[ProblemOut]
    truncated: bool


def _version(v: service.CatalogVersion) -> CatalogOut:
    return CatalogOut(hash=v.hash, loaded_at=v.loaded_at, counts=v.counts)


@router.get("/catalog", response_model=CatalogOut)
async def get_catalog(rt: RuntimeDep, actor: ApiActor) -> CatalogOut:
    """The running catalog's version: its hash, when it was loaded, and how many of each kind."""
    return _version(await service.get_version(rt, actor=actor))


@router.post("/catalog/reload", response_model=ReloadOut,
             responses={422: {"model": RefusedOut, "description": "the catalog has problems; nothing changed"},
                        409: {"description": "another reload is running"}})
async def reload_catalog(rt: RuntimeDep, actor: ApiActor) -> ReloadOut | JSONResponse:
    """Validate the server's catalog files and apply them whole, or refuse them whole (admin)."""
    try:
        done = await service.reload_catalog(rt, actor=actor)
    except service.CatalogRefused as exc:
        body = RefusedOut(
            detail=exc.message, code=exc.code, hint=exc.hint or "", truncated=exc.truncated,
            problems=[ProblemOut(file=p.location.file if p.location else None,
                                 line=p.location.line if p.location else None,
                                 column=p.location.column if p.location else None, message=p.message, hint=p.hint)
                      for p in exc.problems])
        return JSONResponse(body.model_dump(mode="json"), status_code=422)
    return ReloadOut(old_hash=done.old_hash, catalog=_version(done.version), summary=done.summary(),
                     changes={k: ChangeOut(added=list(c.added), removed=list(c.removed), changed=list(c.changed))
                              for k, c in done.changes.items()},
                     notes=done.notes, took_ms=round(done.took_s * 1000, 1))
