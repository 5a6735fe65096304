"""The hashed forms: RFC 8785 itself, and a store holding v1 records (written before schema 0014)
that keeps verifying, with v2 records chained after them."""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import pytest

from opsroom.access.identity import SYSTEM
from opsroom.audit import jcs
from opsroom.audit import service as audit
from opsroom.audit.chain import GENESIS, details_text, record_hash, v1_hash, v2_object
from opsroom.runtime import Runtime
from tests.audit.conftest import rows, sql

# RFC 8785 appendix B: IEEE 754 bit patterns and the text ECMAScript (and JCS) writes for them.
NUMBERS = {
    0x0000000000000000: "0", 0x8000000000000000: "0", 0x0000000000000001: "5e-324",
    0x8000000000000001: "-5e-324", 0x7FEFFFFFFFFFFFFF: "1.7976931348623157e+308",
    0x4340000000000000: "9007199254740992", 0xC340000000000000: "-9007199254740992",
    0x4430000000000000: "295147905179352830000", 0x44B52D02C7E14AF5: "9.999999999999997e+22",
    0x44B52D02C7E14AF6: "1e+23", 0x44B52D02C7E14AF7: "1.0000000000000001e+23",
    0x444B1AE4D6E2EF4E: "999999999999999700000", 0x444B1AE4D6E2EF50: "1e+21",
    0x3EB0C6F7A0B5ED8C: "9.999999999999997e-7", 0x3EB0C6F7A0B5ED8D: "0.000001",
    0x41B3DE4355555553: "333333333.3333332", 0x41B3DE4355555557: "333333333.33333343",
    0xBECBF647612F3696: "-0.0000033333333333333333", 0x43143FF3C1CB0959: "1424953923781206.2",
}


@pytest.mark.parametrize("bits", sorted(NUMBERS))
def test_rfc8785_numbers(bits: int) -> None:
    assert jcs.number(struct.unpack(">d", bits.to_bytes(8, "big"))[0]) == NUMBERS[bits]


def test_rfc8785_sample_and_key_order() -> None:
    sample = {"numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
              "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/", "literals": [None, True, False]}
    assert jcs.dumps(sample) == ('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,'
                                 '1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}')
    # Keys sort by UTF-16 code units: U+1F600 (a surrogate pair) before U+FB33.
    assert jcs.dumps({"\u20ac": 1, "\r": 2, "\U0001f600": 3, "\ufb33": 4, "1": 5, "\u00e9": 6, "\u0080": 7}) \
        == '{"\\r":2,"1":5,"\u0080":7,"\u00e9":6,"\u20ac":1,"\U0001f600":3,"\ufb33":4}'
    for bad in (float("nan"), {1: 2}, "\ud800", object()):
        with pytest.raises(jcs.NotCanonical):
            jcs.dumps(bad)


@pytest.mark.parametrize("details", [{}, {"a": 1.5}, {"x": [1, 2.0, 3]}, {"b": 2**60}, {"é": 1, "e": 2},
                                     {"k": "v.1e5", "n": -0.0}, {"a": {"z": 1, "b": [True, None, "x"]}},
                                     {"\U0001f600": 1, "\ufb33": 2}])
def test_the_fast_details_text_is_the_canonical_one(details: dict[str, object]) -> None:
    assert details_text(details) == jcs.dumps(details)


def test_a_v2_hash_is_sha256_of_the_jcs_object() -> None:
    rec = {"seq": 3, "at": 1796673864.602348, "actor": "local:ann", "door": "cli", "action": "runbook.run",
           "target": "runbook:x", "outcome": "ok", "details": {"execution": 4, "p": 0.5}, "correlation_id": None,
           "prev_hash": "a" * 64}
    assert record_hash(**rec) == hashlib.sha256(jcs.canonical(v2_object(rec))).hexdigest()  # type: ignore[arg-type]
    assert record_hash(**rec) != record_hash(**rec, v=1)  # type: ignore[arg-type]


async def test_v1_records_still_verify_and_v2_follow_them(store_rt: Runtime) -> None:
    prev = GENESIS
    for seq in (1, 2, 3):  # what an opsroom before 0014 wrote (json.dumps defaults for details)
        rec = {"seq": seq, "at": 1796000000.0 + seq, "actor": "opsroom", "door": "system", "action": "old.step",
               "target": f"t:{seq}", "outcome": "ok", "details": {"i": seq, "x": 1.0}, "correlation_id": None,
               "prev_hash": prev}
        prev = v1_hash(**rec)  # type: ignore[arg-type]
        await sql(store_rt, "INSERT INTO audit_records (seq, at, actor, door, action, target, outcome, details, "
                            "correlation_id, prev_hash, hash) VALUES (:seq, :at, :actor, :door, :action, :target, "
                            ":outcome, :details, NULL, :prev_hash, :hash)",
                  **{**rec, "details": json.dumps(rec["details"]), "hash": prev})
    await sql(store_rt, "INSERT INTO audit_head (id, seq, hash) VALUES (1, 3, :h)", h=prev)
    await audit.append_alone(store_rt, actor=SYSTEM, action="new.step", target="t:4", details={"y": 2.5})
    assert [r["v"] for r in await rows(store_rt)] == [1, 1, 1, 2]
    result = await audit.verify(store_rt)
    assert result.ok and result.records == 4, result

    await sql(store_rt, "UPDATE audit_records SET details = :d WHERE seq = 2", d=json.dumps({"i": 9, "x": 1.0}))
    broken = await audit.verify(store_rt)
    assert not broken.ok and broken.broken_seq == 2, broken
    # Naming a record v2 does not let an edited v1 record through either.
    await sql(store_rt, "UPDATE audit_records SET v = 2 WHERE seq = 2")
    assert (await audit.verify(store_rt)).broken_seq == 2


async def test_details_with_no_json_form_are_recorded_as_text(store_rt: Runtime) -> None:
    """NaN, infinity, a lone surrogate, a tuple, an int key: the action is recorded (never refused for
    its details) and the record verifies."""
    details: dict[Any, Any] = {"nan": float("nan"), "inf": float("-inf"), "odd": "a\ud800b", "t": (1, 2), 7: "k",
               "big": 2**60}
    await audit.append_alone(store_rt, actor=SYSTEM, action="odd.details", target="t", details=details)
    [record] = await rows(store_rt)
    assert record["details"]["nan"] == "NaN" and record["details"]["inf"] == "-Infinity"
    assert record["details"]["odd"] == "a?b" and record["details"]["t"] == [1, 2] and record["details"]["7"]
    assert (await audit.verify(store_rt)).ok
