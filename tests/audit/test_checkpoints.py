"""Signed checkpoints: when they are made, where they go (directory, git work tree, syslog), the key file."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from opsroom import server
from opsroom.access.identity import SYSTEM
from opsroom.audit import checkpointer, keys
from opsroom.audit import checkpoints as cps
from opsroom.audit import service as audit
from opsroom.audit.checkpointer import Checkpointer, checkpoint_now
from opsroom.config import Settings
from opsroom.runtime import Runtime
from tests.e2e.harness import cli


async def runtime(data: Path, **settings: object) -> Runtime:
    return await server.open_runtime(Settings(data=data, demo=True, **settings))  # type: ignore[arg-type]


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = await runtime(tmp_path / "data")
    try:
        yield rt
    finally:
        await rt.close()


async def append(rt: Runtime, n: int) -> None:
    for i in range(n):
        await audit.append_alone(rt, actor=SYSTEM, action="test.step", target=f"t:{i}")


def files(rt: Runtime) -> list[Path]:
    return sorted(checkpointer.checkpoint_dir(rt.settings).glob("*.json"))


async def test_every_n_records(rt: Runtime) -> None:
    writer = Checkpointer(rt, every=5, seconds=0)
    await append(rt, 4)
    assert await writer.tick() is None and files(rt) == []
    await append(rt, 1)
    done = await writer.tick()
    assert done is not None and done.checkpoint.size == 5
    assert await writer.tick() is None  # nothing new: not signed again
    await append(rt, 5)
    again = await writer.tick()
    assert again is not None and again.checkpoint.size == 10 and len(files(rt)) == 2
    # A restarted writer starts from the newest checkpoint on disk, not from zero.
    assert await Checkpointer(rt, every=5, seconds=0).tick() is None


async def test_every_t_seconds_when_records_were_added(rt: Runtime) -> None:
    writer = Checkpointer(rt, every=0, seconds=0.3)
    await append(rt, 1)
    assert await writer.tick() is None  # too soon
    await asyncio.sleep(0.35)
    done = await writer.tick()
    assert done is not None and done.checkpoint.size == 1
    await asyncio.sleep(0.35)
    assert await writer.tick() is None  # idle log: nothing to sign


async def test_start_and_stop_in_a_server(tmp_path: Path) -> None:
    rt = await runtime(tmp_path / "data", audit_checkpoint_every=3, audit_checkpoint_seconds=0)
    try:
        writer = checkpointer.start(rt)
        assert writer is not None
        writer.poll = 0.05
        await append(rt, 3)
        for _ in range(100):
            if files(rt):
                break
            await asyncio.sleep(0.05)
        assert [cps.parse(f.read_text()).size for f in files(rt)] == [3]
        await append(rt, 1)
        await checkpointer.stop(rt)  # the last records are signed on the way out
        assert [cps.parse(f.read_text()).size for f in files(rt)] == [3, 4]
        assert (await audit.verify(rt)).checkpoints == 2
    finally:
        await rt.close()


async def test_both_intervals_zero_starts_no_writer(tmp_path: Path) -> None:
    rt = await runtime(tmp_path / "data", audit_checkpoint_every=0, audit_checkpoint_seconds=0)
    try:
        assert checkpointer.start(rt) is None
    finally:
        await rt.close()


async def test_directory_files_are_never_overwritten(rt: Runtime) -> None:
    await append(rt, 2)
    done = await checkpoint_now(rt)
    assert done.path.name == done.checkpoint.file_name()
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-000000000002\.json", done.path.name)
    assert cps.parse(done.path.read_text()) == done.checkpoint
    with pytest.raises(FileExistsError):
        cps.write_dir(done.path.parent, done.checkpoint)
    assert not [p for p in done.path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
async def test_git_work_tree_gets_a_commit_per_checkpoint(tmp_path: Path) -> None:
    repo = tmp_path / "audit-repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    rt = await runtime(tmp_path / "data", audit_checkpoint_dir=repo)
    try:
        await append(rt, 2)
        first = await checkpoint_now(rt)
        await append(rt, 1)
        second = await checkpoint_now(rt)
    finally:
        await rt.close()
    assert first.git and second.git and not first.problems
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%s", "--name-only"], capture_output=True,
                         text=True, check=True).stdout
    assert "audit checkpoint opsroom size 3" in log and second.path.name in log and first.path.name in log
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True,
                            check=True).stdout
    assert status == ""  # everything written is committed


async def test_syslog_rfc5424_to_a_local_udp_socket(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    port = sock.getsockname()[1]
    rt = await runtime(tmp_path / "data", audit_syslog=f"udp://127.0.0.1:{port}")
    try:
        await append(rt, 2)
        done = await checkpoint_now(rt)
        frame = (await asyncio.to_thread(sock.recv, 65536)).decode()
    finally:
        sock.close()
        await rt.close()
    assert done.syslog
    # <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG; authpriv (10) * 8 + warning (4) = 84
    m = re.fullmatch(r"<84>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) opsroom (\d+) audit-checkpoint - (.+)",
                     frame)
    assert m, frame
    assert cps.parse(m.group(4)) == done.checkpoint


async def test_syslog_failure_is_reported_and_the_file_still_written(tmp_path: Path) -> None:
    rt = await runtime(tmp_path / "data", audit_syslog=str(tmp_path / "no-such-socket"))
    try:
        done = await checkpoint_now(rt)
    finally:
        await rt.close()
    assert done.path.exists() and not done.syslog and "syslog" in done.problems[0]


async def test_key_file_made_0600_and_a_readable_one_refused(rt: Runtime) -> None:
    await checkpoint_now(rt)
    path = keys.key_path(rt.settings.data, None)
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o640)
    with pytest.raises(keys.KeyRefused, match=r"readable by its group or others \(mode 0640\): refused"):
        await checkpoint_now(rt)
    path.chmod(0o604)
    with pytest.raises(keys.KeyRefused):
        await checkpoint_now(rt)


def test_cli_checkpoint_public_key_and_verify(tmp_path: Path) -> None:
    env = {"OPSROOM_DATA": str(tmp_path / "data"), "OPSROOM_DEMO": "1"}
    assert cli("migrate", env=env).returncode == 0
    made = cli("audit", "checkpoint", env=env)
    assert made.returncode == 0 and "checkpoint of 1 records written to" in made.stdout, made.stdout + made.stderr
    pem = cli("audit", "public-key", env=env)
    assert pem.returncode == 0 and pem.stdout.startswith("-----BEGIN PUBLIC KEY-----"), pem.stderr
    key_file = tmp_path / "auditor.pub"
    key_file.write_text(pem.stdout)
    ok = cli("audit", "verify", "--public-key", str(key_file), env=env)
    assert ok.returncode == 0 and "1 signed checkpoints match" in ok.stdout, ok.stdout + ok.stderr
    # The checkpoint is committed after the request it covers; verify's own record comes after it.
    body = json.loads(next((tmp_path / "data" / "audit-checkpoints").glob("*.json")).read_text())
    assert body["size"] == 1 and body["log"] == "opsroom"

    usage = cli("audit", "verify", "--checkpoints", str(tmp_path / "missing"), env=env)
    assert usage.returncode == 2 and "no such directory" in usage.stderr
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key")
    assert cli("audit", "verify", "--public-key", str(bad_key), env=env).returncode == 2

    with sqlite3.connect(tmp_path / "data" / "opsroom.db") as db:
        db.execute("UPDATE audit_records SET actor = 'mallory' WHERE seq = 1")
    broken = cli("audit", "verify", env=env)
    assert broken.returncode == 1 and "audit BROKEN at record 1: content does not match its hash" in broken.stderr, \
        broken.stdout + broken.stderr

    (tmp_path / "data" / keys.KEY_NAME).chmod(0o644)
    refused = cli("audit", "public-key", env=env)
    assert refused.returncode == 1 and "readable by its group or others" in refused.stderr, refused.stderr
