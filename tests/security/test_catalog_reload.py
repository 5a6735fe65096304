"""Catalog reload, by attack class: authorization bypass (not an admin, no credential), reading
outside the catalog directory through a link, resource exhaustion with an oversized file, and
reloads racing each other. Every refusal leaves the running catalog as it was."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.catalog import service as catalog_service
from opsroom.errors import Conflict, PermissionDenied
from tests.chat.harness import Served, serve
from tests.factories import small_catalog, token_for, write_catalog

USERS = [{"name": "you", "roles": ["operator"]}, {"name": "boss", "roles": ["approver"]},
         {"name": "dev", "roles": ["viewer"]}, {"name": "admin", "roles": ["admin"]},
         {"name": "nobody", "roles": []}]
OUTSIDE_SECRET = "db_password_9f3e1c"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serve(tmp_path, catalog_path=small_catalog(tmp_path, users=USERS)) as running:
        yield running


async def _reload(served: Served, user: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=served.base, timeout=30) as http:
        return await http.post("/api/v1/catalog/reload",
                               headers={"Authorization": f"Bearer {await token_for(served.rt, user)}"})


async def _outcomes(served: Served) -> list[tuple[str, str, Any]]:
    records = await audit.list_records(served.rt, actor=SYSTEM, action="catalog.reload", limit=100)
    return [(r.actor, r.outcome, r.details) for r in reversed(records)]


def _add_check(served: Served, name: str) -> None:
    catalog = served.rt.settings.catalog
    assert catalog is not None
    write_catalog(catalog, {"checks": [{"name": name, "type": "command", "service": "svc", "interval": "60s",
                                        "argv": ["true"]}]}, name=f"{name}.yaml")


async def test_authorization_bypass_not_an_admin_is_refused_and_audited(served: Served) -> None:
    before = served.rt.catalog_hash
    _add_check(served, "sneaky")
    for user in ("you", "boss", "dev"):
        resp = await _reload(served, user)
        assert resp.status_code == 403, resp.text
        assert f"{user} may not reload the catalog" in resp.json()["detail"]
    async with httpx.AsyncClient(base_url=served.base, timeout=30) as http:
        assert (await http.post("/api/v1/catalog/reload")).status_code == 401
        assert (await http.get("/api/v1/catalog")).status_code == 401
        forged = await http.post("/api/v1/catalog/reload", headers={"Authorization": "Bearer not-a-token"})
        assert forged.status_code == 401
    assert served.rt.catalog_hash == before and "sneaky" not in served.rt.catalog.checks
    assert [(a, o) for a, o, _ in await _outcomes(served)] == [("you", "refused"), ("boss", "refused"),
                                                               ("dev", "refused")]
    # The viewer may see which version runs, not change it.
    async with httpx.AsyncClient(base_url=served.base, timeout=30) as http:
        seen = await http.get("/api/v1/catalog",
                              headers={"Authorization": f"Bearer {await token_for(served.rt, 'dev')}"})
        assert seen.status_code == 200 and seen.json()["hash"] == before
        hidden = await http.get("/api/v1/catalog",
                                headers={"Authorization": f"Bearer {await token_for(served.rt, 'nobody')}"})
    assert hidden.status_code == 403 and "hash" not in hidden.json()
    reads = await audit.list_records(served.rt, actor=SYSTEM, action="catalog.read", limit=10)
    assert sorted((r.actor, r.outcome) for r in reads) == [("dev", "ok"), ("nobody", "refused")]
    applied = await _reload(served, "admin")
    assert applied.status_code == 200 and applied.json()["changes"]["checks"]["added"] == ["sneaky"]


async def test_a_link_out_of_the_catalog_directory_is_refused_unread(served: Served, tmp_path: Path) -> None:
    """Path traversal by symlink: the server's account may read files the catalog's authors may not.
    A link to one is refused whole, and nothing of the file it points at comes back."""
    catalog = served.rt.settings.catalog
    assert catalog is not None
    before = served.rt.catalog_hash
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secrets.yaml").write_text(f"checks:\n  - name: {OUTSIDE_SECRET}\n    bogus: {OUTSIDE_SECRET}\n")
    os.symlink(outside / "secrets.yaml", catalog / "linked.yaml")
    resp = await _reload(served, "admin")
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert OUTSIDE_SECRET not in resp.text
    assert [p["file"] for p in body["problems"]] == [str(catalog / "linked.yaml")]
    assert "leads outside the catalog directory" in body["problems"][0]["message"]
    assert served.rt.catalog_hash == before
    # A linked directory is never entered (the loader's own rule). A link that stays inside is
    # fine: a Kubernetes ConfigMap mounts each file as a link into its hidden ..data directory.
    (catalog / "linked.yaml").unlink()
    os.symlink(outside, catalog / "linkdir")
    (catalog / "..data").mkdir()
    write_catalog(catalog / "..data", {"checks": [{"name": "mounted", "type": "command", "service": "svc",
                                                   "argv": ["true"]}]}, name="mounted.yaml")
    os.symlink(catalog / "..data" / "mounted.yaml", catalog / "mounted.yaml")
    resp = await _reload(served, "admin")
    assert resp.status_code == 200, resp.text
    assert resp.json()["changes"]["checks"]["added"] == ["mounted"]
    assert OUTSIDE_SECRET not in served.rt.catalog.checks
    refused = [d for _, o, d in await _outcomes(served) if o == "refused"]
    assert refused and OUTSIDE_SECRET not in str(refused)


async def test_an_oversized_file_is_refused_before_it_is_read(served: Served) -> None:
    """Resource exhaustion: a 2 GB file (sparse: no disk used) would take the server's memory."""
    catalog = served.rt.settings.catalog
    assert catalog is not None
    before = served.rt.catalog_hash
    with (catalog / "huge.yaml").open("wb") as f:
        f.truncate(2 * 2**30)
    started = time.monotonic()
    resp = await _reload(served, "admin")
    assert time.monotonic() - started < 5, "the file was read"
    assert resp.status_code == 422, resp.text
    problem = resp.json()["problems"][0]
    assert problem["file"] == str(catalog / "huge.yaml") and "2048 MB" in problem["message"]
    assert "split it" in problem["hint"]
    assert served.rt.catalog_hash == before


async def test_reloads_racing_each_other(served: Served) -> None:
    """Two at once: one applies, the other is refused clearly (or, for SIGHUP's wait, runs after);
    never two swaps interleaved."""
    rt = served.rt
    admin = await access.actor_by_name(rt, name="admin", door="api")
    _add_check(served, "raced")
    first, second = await asyncio.gather(catalog_service.reload_catalog(rt, actor=admin),
                                         catalog_service.reload_catalog(rt, actor=admin), return_exceptions=True)
    assert isinstance(first, catalog_service.Reloaded) and first.changes["checks"].added == ("raced",)
    assert isinstance(second, Conflict) and "is running now" in second.message, second
    _add_check(served, "raced-again")
    third, fourth = await asyncio.gather(catalog_service.reload_catalog(rt, actor=admin),
                                         catalog_service.reload_catalog(rt, actor=admin, wait=True))
    assert isinstance(third, catalog_service.Reloaded) and third.changes["checks"].added == ("raced-again",)
    assert fourth.changes == {} and fourth.summary() == "no changes"  # it read the files after the first
    # The loser is audited at once, while the winner still reads the files.
    assert [o for _, o, _ in await _outcomes(served)] == ["refused", "applied", "applied", "applied"]
    # Over HTTP too: the losing request is a 409 that says to wait, not a 500.
    _add_check(served, "raced-http")
    answers = await asyncio.gather(_reload(served, "admin"), _reload(served, "admin"))
    codes = sorted(a.status_code for a in answers)
    assert codes in ([200, 200], [200, 409]), [a.text for a in answers]
    if codes == [200, 409]:
        assert "wait for it" in next(a for a in answers if a.status_code == 409).json()["hint"]
    assert "raced-http" in rt.catalog.checks


async def test_the_service_refuses_a_caller_that_is_no_admin(served: Served) -> None:
    you = await access.actor_by_name(served.rt, name="you", door="chat")
    with pytest.raises(PermissionDenied, match="may not reload the catalog"):
        await catalog_service.reload_catalog(served.rt, actor=you)
