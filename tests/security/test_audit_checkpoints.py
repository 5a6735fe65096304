"""The attacker against the off-database checkpoints (docs/audit.md): someone who can write the store
and the checkpoint directory, but does not hold the signing key the auditor's public key belongs to.
Each test names the attack class it stands for."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsroom.audit import checkpoints as cps
from opsroom.audit import keys
from opsroom.audit import service as audit
from opsroom.audit.checkpointer import checkpoint_dir, checkpoint_now, signing_key
from opsroom.runtime import Runtime
from tests.audit.conftest import chain_with_checkpoint, rechain, rows, sql


async def test_forged_signature(store_rt: Runtime) -> None:
    """Class: forgery. A checkpoint signed by the attacker's own key, and a genuine one whose head was
    edited (its signature kept): neither verifies with the log's public key."""
    await chain_with_checkpoint(store_rt)
    records = await rows(store_rt)
    own = Ed25519PrivateKey.generate()
    fake = cps.sign(own, log="opsroom", size=6, head=records[5]["hash"], at=4_000_000_000.0)
    directory = checkpoint_dir(store_rt.settings)
    cps.write_dir(directory, fake)
    result = await audit.verify(store_rt)
    assert not result.ok and result.bad_checkpoint == fake.file_name(), result
    assert "signature does not verify" in (result.reason or "")

    (directory / fake.file_name()).unlink()
    genuine = next(directory.glob("*.json"))
    body = json.loads(genuine.read_text())
    body["head"] = "f" * 64
    genuine.write_text(json.dumps(body))
    result = await audit.verify(store_rt)
    assert not result.ok and result.bad_checkpoint == genuine.name and "signature" in (result.reason or "")


async def test_rollback_to_an_older_valid_checkpoint(store_rt: Runtime) -> None:
    """Class: rollback. The newest checkpoint's file is given the content of an older, validly signed one
    (so a cut back to the older size would pass): the content no longer matches the file's name."""
    old = await chain_with_checkpoint(store_rt, n=3)
    new = await chain_with_checkpoint(store_rt, n=3)
    assert (await audit.verify(store_rt)).ok
    new.path.write_text(old.path.read_text())
    before = await rows(store_rt)
    await sql(store_rt, "DELETE FROM audit_records WHERE seq > 3")
    await sql(store_rt, "UPDATE audit_head SET seq = 3, hash = :h WHERE id = 1", h=before[2]["hash"])
    result = await audit.verify(store_rt)
    assert not result.ok and result.bad_checkpoint == new.path.name, result
    assert "does not match its name: replaced by another checkpoint" in (result.reason or "")


async def test_huge_size_and_garbage_files(store_rt: Runtime) -> None:
    """Class: malformed input. A size no log can have, a JSON that is no object, bytes that are no JSON,
    no UTF-8, and an oversized file: each named, none crashes verify or is trusted."""
    await chain_with_checkpoint(store_rt)
    directory = checkpoint_dir(store_rt.settings)
    genuine = next(directory.glob("*.json"))
    body = json.loads(genuine.read_text())
    planted = {
        "00-huge.json": json.dumps({**body, "size": 10**400}),
        "01-negative.json": json.dumps({**body, "size": -1}),
        "02-list.json": "[1, 2, 3]",
        "03-garbage.json": "\x00\x01{{{ not json",
        "04-bool-size.json": json.dumps({**body, "size": True}),
    }
    for name, content in planted.items():
        (directory / name).write_text(content)
        result = await audit.verify(store_rt)
        assert not result.ok and result.bad_checkpoint == name and "not a valid checkpoint" in (result.reason or "")
        (directory / name).unlink()
    (directory / "05-latin1.json").write_bytes(b"\xff\xfe{")
    assert (await audit.verify(store_rt)).bad_checkpoint == "05-latin1.json"
    (directory / "05-latin1.json").unlink()
    with open(directory / "06-big.json", "wb") as big:
        big.truncate(1 << 30)  # sparse: a gigabyte that is never read
    result = await audit.verify(store_rt)
    assert result.bad_checkpoint == "06-big.json" and "at most" in (result.reason or ""), result
    (directory / "06-big.json").unlink()
    assert (await audit.verify(store_rt)).ok


async def test_key_file_swapped(store_rt: Runtime, tmp_path: Path) -> None:
    """Class: key substitution. The attacker replaces the signing key with their own, rewrites the chain
    and signs a matching checkpoint. The old checkpoints fail against the new key, and the auditor's
    public key (taken before) refuses the attacker's checkpoint."""
    await chain_with_checkpoint(store_rt)
    auditor = tmp_path / "auditor.pub"
    auditor.write_text(keys.public_pem(signing_key(store_rt.settings).public_key()))

    key_file = keys.key_path(store_rt.settings.data, None)
    key_file.unlink()
    signing_key(store_rt.settings)  # a new key, made 0600 as the real one would be
    records = await rows(store_rt)
    records[0]["actor"] = "mallory"
    await rechain(store_rt, records)
    forged = await checkpoint_now(store_rt)

    local = await audit.verify(store_rt)  # with the swapped key: the original checkpoint fails
    assert not local.ok and local.bad_checkpoint not in (None, forged.path.name), local
    # Even with the original checkpoints removed, the auditor's key refuses the attacker's.
    for path in checkpoint_dir(store_rt.settings).glob("*.json"):
        if path != forged.path:
            path.unlink()
    assert (await audit.verify(store_rt)).ok  # the attacker's own view is consistent...
    result = await audit.verify(store_rt, public_key=keys.read_public(auditor))
    assert not result.ok and result.bad_checkpoint == forged.path.name, result
    assert "signature does not verify" in (result.reason or "")


async def test_checkpoint_of_another_log(store_rt: Runtime) -> None:
    """Class: replay across logs. A validly signed checkpoint of another log under the same key is
    not evidence about this one."""
    await chain_with_checkpoint(store_rt)
    other = cps.sign(signing_key(store_rt.settings), log="staging", size=1, head="0" * 64, at=4_000_000_000.0)
    cps.write_dir(checkpoint_dir(store_rt.settings), other)
    result = await audit.verify(store_rt)
    assert not result.ok and result.bad_checkpoint == other.file_name() and "'staging'" in (result.reason or "")


async def test_group_readable_key_is_refused_not_used(store_rt: Runtime) -> None:
    """Class: key exposure. A key others could have read is no proof: refused, with how to fix it."""
    await chain_with_checkpoint(store_rt)
    key_file = keys.key_path(store_rt.settings.data, None)
    os.chmod(key_file, 0o644)
    try:
        await checkpoint_now(store_rt)
    except keys.KeyRefused as exc:
        assert "chmod 600" in str(exc)
    else:
        raise AssertionError("a world-readable key was used")


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
async def test_newest_checkpoints_deleted_from_a_git_directory(store_rt: Runtime, tmp_path: Path) -> None:
    """Class: rollback by deletion. The log is cut back and the newest checkpoint file removed with it,
    so the directory alone agrees with the shorter log: its git history still names the file."""
    repo = tmp_path / "checkpoints"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    store_rt.settings.audit_checkpoint_dir = repo
    await chain_with_checkpoint(store_rt, n=3)
    new = await chain_with_checkpoint(store_rt, n=3)
    assert new.git and (await audit.verify(store_rt)).ok
    before = await rows(store_rt)
    await sql(store_rt, "DELETE FROM audit_records WHERE seq > 3")
    await sql(store_rt, "UPDATE audit_head SET seq = 3, hash = :h WHERE id = 1", h=before[2]["hash"])
    new.path.unlink()
    result = await audit.verify(store_rt)
    assert not result.ok and result.bad_checkpoint == new.path.name, result
    assert "git history and is gone" in (result.reason or "")


async def test_git_is_not_handed_the_servers_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Secret exposure to a child process: the server's environment holds OPSROOM_SECRET_KEY, the
    # store's URL with its password and OIDC client secrets; git, run for checkpoints, gets none.
    real_git = shutil.which("git")
    assert real_git is not None
    seen = tmp_path / "seen"
    seen.mkdir()
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nenv > "{seen}/$$.env"\nexec {real_git} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("OPSROOM_SECRET_KEY", "canary-secret-key-0123456789")
    monkeypatch.setenv("OPSROOM_DATABASE_URL", "postgresql+asyncpg://u:canary-db-password@127.0.0.1/x")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([real_git, "init", "-q", str(repo)], check=True)
    cp = cps.Checkpoint(log="opsroom", size=1, head="0" * 64, at=1.0, key="k", sig="s")
    path = cps.write_dir(repo, cp)
    cps.git_commit(repo, path, cp)
    assert cps.git_removed(repo) == []
    dumps = [p.read_text() for p in seen.iterdir()]
    assert len(dumps) >= 3  # add, commit, and the work-tree check of git_removed
    assert not any("canary" in d for d in dumps)
    assert all("GIT_COMMITTER_NAME=opsroom" in d for d in dumps)  # only what it needs, and our identity
