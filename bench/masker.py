"""The masker under many secrets: every log line, room message and response passes through it.

A long-running server learns every secret parameter of every run (and their encodings), so
the masker holds thousands of forms after months. Measured here, in-process:

  opsroom   Masker (trie patterns, big + recent): time to register one more secret once N
            are known, and time to mask a 4 KB output with N known
  baseline  a flat alternation of the same forms, longest first (the first masker): one
            compile of all N (what every registration cost it) and the same 4 KB mask

    .venv/bin/python bench/masker.py --quick     # 500 secrets
    .venv/bin/python bench/masker.py             # 2000 secrets
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_ms, percentile, r, repo_on_path

repo_on_path()

from opsroom.secrets.masking import MASK, Masker, encodings  # noqa: E402

TEXT = "step 3 (restart) ok: service-b answered 200 in 12 ms; nothing else to report\n" * 52  # ~4 KB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--secrets", type=int, default=None)
    args = parser.parse_args()
    n = args.secrets or (500 if args.quick else 2000)
    values = [secrets.token_urlsafe(12) for _ in range(n)]

    masker = Masker()
    adds = []
    for value in values:
        t0 = time.perf_counter()
        masker.add(value)
        adds.append(time.perf_counter() - t0)
    masks = []
    for _ in range(50):
        t0 = time.perf_counter()
        masker.mask(TEXT)
        masks.append(time.perf_counter() - t0)
    assert masker.mask(f"x {values[0]} y {values[-1]}") == f"x {MASK} y {MASK}"

    forms: set[str] = set()
    for value in values:
        forms |= encodings(value)
    t0 = time.perf_counter()
    flat = re.compile("|".join(map(re.escape, sorted(forms, key=len, reverse=True))))
    flat_compile = time.perf_counter() - t0
    flat_masks = []
    for _ in range(10):
        t0 = time.perf_counter()
        flat.sub(MASK, TEXT)
        flat_masks.append(time.perf_counter() - t0)

    print(f"{n} secrets, {len(forms)} forms")
    print(f"opsroom add, last 100: {fmt_ms(adds[-100:])}")
    print(f"opsroom mask 4 KB: {fmt_ms(masks)}")
    print(f"baseline compile of all forms (each add, before): {flat_compile * 1000:.1f} ms")
    print(f"baseline mask 4 KB: {fmt_ms(flat_masks)}")
    print(json.dumps({"figure": f"mask a 4 KB output with {n} secrets known (p50)",
                      "value": r(percentile(masks, 50) * 1000), "unit": "ms", "target": None,
                      "baseline": r(percentile(flat_masks, 50) * 1000),
                      "add_p50_ms": r(percentile(adds[-100:], 50) * 1000),
                      "baseline_add_ms": r(flat_compile * 1000)}))


if __name__ == "__main__":
    main()
