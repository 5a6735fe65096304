"""Acceptance 1 of issue 16: each tampering of the log is detected by `audit verify`, naming the record
or the checkpoint, on SQLite and PostgreSQL. The last two (a cut tail, a consistently rewritten chain)
pass the chain itself and are caught by the signed checkpoints kept off the database."""

from __future__ import annotations

from pathlib import Path

from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.audit.chain import record_hash
from opsroom.runtime import Runtime
from tests.audit.conftest import FIELDS, chain_with_checkpoint, rechain, rows, sql


async def test_an_intact_log_with_its_checkpoint_verifies(store_rt: Runtime) -> None:
    await chain_with_checkpoint(store_rt)
    result = await audit.verify(store_rt)
    assert result.ok and result.records == 6 and result.checkpoints == 1, result


async def test_edited_record(store_rt: Runtime) -> None:
    await chain_with_checkpoint(store_rt)
    await sql(store_rt, "UPDATE audit_records SET actor = 'mallory' WHERE seq = 3")
    result = await audit.verify(store_rt)
    assert not result.ok and result.broken_seq == 3 and "does not match its hash" in (result.reason or ""), result


async def test_edited_details_text(store_rt: Runtime) -> None:
    """The stored JSON text itself changed (a value inside details), not a column the hash lists."""
    await chain_with_checkpoint(store_rt)
    await sql(store_rt, "UPDATE audit_records SET details = :d WHERE seq = 4", d='{"i":4,"note":"päß","ratio":9}')
    result = await audit.verify(store_rt)
    assert not result.ok and result.broken_seq == 4, result


async def test_deleted_record(store_rt: Runtime) -> None:
    await chain_with_checkpoint(store_rt)
    await sql(store_rt, "DELETE FROM audit_records WHERE seq = 3")
    result = await audit.verify(store_rt)
    assert not result.ok and result.broken_seq == 3 and "record 3 is missing" in (result.reason or ""), result


async def test_deleted_record_with_the_rest_renumbered(store_rt: Runtime) -> None:
    """Record 3 removed and 4..6 moved down so there is no gap: 4 (now 3) links to the old 3."""
    await chain_with_checkpoint(store_rt)
    await sql(store_rt, "DELETE FROM audit_records WHERE seq = 3")
    for seq in (4, 5, 6):
        await sql(store_rt, "UPDATE audit_records SET seq = :new WHERE seq = :old", new=seq - 1, old=seq)
    result = await audit.verify(store_rt)
    assert not result.ok and result.broken_seq == 3 and "prev_hash" in (result.reason or ""), result


async def test_inserted_record(store_rt: Runtime) -> None:
    """A record with a correct hash of its own slipped in after record 3 (later ones moved up): the
    record after it no longer links to its predecessor."""
    await chain_with_checkpoint(store_rt)
    before = await rows(store_rt)
    for seq in (6, 5, 4):
        await sql(store_rt, "UPDATE audit_records SET seq = :new WHERE seq = :old", new=seq + 1, old=seq)
    forged = {**before[2], "seq": 4, "actor": "mallory", "target": "t:planted", "prev_hash": before[2]["hash"]}
    forged["hash"] = record_hash(**{f: forged[f] for f in FIELDS})
    await sql(store_rt, "INSERT INTO audit_records (seq, at, actor, door, action, target, outcome, details, "
                        "correlation_id, prev_hash, hash, v) VALUES (4, :at, 'mallory', :door, :action, "
                        "'t:planted', :outcome, :details, NULL, :prev, :hash, 2)",
              at=forged["at"], door=forged["door"], action=forged["action"], outcome=forged["outcome"],
              details='{"i":2,"note":"päß","ratio":0.6666666666666666}', prev=forged["prev_hash"],
              hash=forged["hash"])
    result = await audit.verify(store_rt)
    assert not result.ok and result.broken_seq == 5 and "prev_hash" in (result.reason or ""), result


async def test_two_records_reordered(store_rt: Runtime) -> None:
    await chain_with_checkpoint(store_rt)
    await sql(store_rt, "UPDATE audit_records SET seq = 100 WHERE seq = 2")
    await sql(store_rt, "UPDATE audit_records SET seq = 2 WHERE seq = 3")
    await sql(store_rt, "UPDATE audit_records SET seq = 3 WHERE seq = 100")
    result = await audit.verify(store_rt)
    assert not result.ok and result.broken_seq == 2 and "prev_hash" in (result.reason or ""), result


async def test_tail_cut_off_is_caught_by_the_checkpoint(store_rt: Runtime, tmp_path: Path) -> None:
    written = await chain_with_checkpoint(store_rt)
    before = await rows(store_rt)
    await sql(store_rt, "DELETE FROM audit_records WHERE seq > 4")
    await sql(store_rt, "UPDATE audit_head SET seq = 4, hash = :h WHERE id = 1", h=before[3]["hash"])
    empty = tmp_path / "none"
    empty.mkdir()
    # The chain alone is consistent: only the signed checkpoint remembers 6 records.
    assert (await audit.verify(store_rt, checkpoints=empty)).ok
    result = await audit.verify(store_rt)
    assert not result.ok and result.bad_checkpoint == written.path.name, result
    assert f"checkpoint {written.path.name} covers 6 records but the log holds 4" in (result.reason or "")


async def test_whole_chain_rewritten_is_caught_by_the_checkpoint(store_rt: Runtime, tmp_path: Path) -> None:
    written = await chain_with_checkpoint(store_rt)
    records = await rows(store_rt)
    records[1]["actor"] = "mallory"  # the edit to hide
    records.append({**records[-1], "target": "t:more"})  # and the log even grows past the checkpoint
    await rechain(store_rt, records)
    empty = tmp_path / "none"
    empty.mkdir()
    assert (await audit.verify(store_rt, checkpoints=empty)).ok  # consistent: nothing inside shows it
    result = await audit.verify(store_rt)
    assert not result.ok and result.bad_checkpoint == written.path.name and result.broken_seq == 6, result
    assert "hash at record 6 is not the signed one" in (result.reason or "")


async def test_appending_after_a_checkpoint_stays_valid(store_rt: Runtime) -> None:
    await chain_with_checkpoint(store_rt)
    await audit.append_alone(store_rt, actor=SYSTEM, action="test.more", target="t")
    result = await audit.verify(store_rt)
    assert result.ok and result.records == 7 and result.checkpoints == 1, result
