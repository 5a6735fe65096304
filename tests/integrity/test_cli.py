"""`opsroom integrity status | scan | accept`: local admin commands, in a process of their own."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.e2e.harness import cli
from tests.integrity.conftest import make_tree


def test_scan_status_and_accept_from_the_command_line(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    data = tmp_path / "data"
    env = {"OPSROOM_DATA": str(data), "OPSROOM_CATALOG": str(tree.catalog),
           "OPSROOM_INTEGRITY_PATHS": json.dumps([str(tree.extra)])}
    assert cli("migrate", env=env).returncode == 0
    first = cli("integrity", "scan", env=env)
    assert first.returncode == 0 and "baseline made" in first.stdout, first.stdout + first.stderr

    tree.restart.write_text("#!/bin/sh\necho changed\n")
    found = cli("integrity", "scan", env=env)
    assert found.returncode == 1 and "1 new change(s)" in found.stdout and "restart-prod" in found.stdout, found.stdout
    status = cli("integrity", "status", "--json", env=env)
    assert status.returncode == 1, status.stderr
    body = json.loads(status.stdout)
    assert [c["path"] for c in body["changes"]] == [str(tree.restart)]
    assert body["quarantined"] == ["restart-prod"] and body["baseline_ok"] is True

    # Without the server's catalog every catalog file would be accepted as deleted: refused.
    no_catalog = cli("integrity", "accept", env={k: v for k, v in env.items() if k != "OPSROOM_CATALOG"})
    assert no_catalog.returncode == 1 and "error: no catalog" in no_catalog.stderr, no_catalog.stderr

    accepted = cli("integrity", "accept", str(tree.restart), env=env)
    assert accepted.returncode == 0 and f"cleared: {tree.restart}" in accepted.stdout, accepted.stderr
    clean = cli("integrity", "status", env=env)
    assert clean.returncode == 0 and "no unaccepted changes" in clean.stdout, clean.stdout + clean.stderr

    with sqlite3.connect(data / "opsroom.db") as db:
        actions = [(a.split(":")[0], act) for a, act in db.execute(
            "SELECT actor, action FROM audit_records WHERE action LIKE 'integrity.%' ORDER BY seq")]
    assert actions == [("opsroom", "integrity.baseline"), ("local", "integrity.scan"), ("local", "integrity.scan"),
                       ("local", "integrity.status"), ("local", "integrity.accept"), ("local", "integrity.status")]
