"""Safe output: every message on every platform passes chat/safe.render once per platform.

Measured in-process: the time to render a 500-character message (plain ASCII, and non-ASCII
full of markup and mention attempts) in each of the five formats, best of several runs.
Baseline, in the same run: html.escape of the same text (the least any renderer must do).

    .venv/bin/python bench/safe_render.py --quick
"""

from __future__ import annotations

import argparse
import html
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, info, r, repo_on_path

repo_on_path()

from opsroom.chat.base import Capabilities, Outgoing  # noqa: E402
from opsroom.chat.safe import render  # noqa: E402

TARGET_US = 50.0
FORMATS = ("plain", "markdown", "mrkdwn", "html", "irc")
ASCII = ("Service web is healthy; check http OK in 12 ms. " * 11)[:500]
MIXED = ("Dienst web — Prüfung OK in 12 ms ✓ @alice @channel <b>x</b> & [y](z) \x1b[31m " * 11)[:500]


def best_us(fn: object, number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    number, repeat = (300, 5) if args.quick else (2000, 7)
    worst = 0.0
    for name, text in (("ascii", ASCII), ("mixed", MIXED)):
        out = Outgoing(room="ops", channel="C1", text=text, link="https://opsroom.example/executions/7")
        base = best_us(lambda t=text: html.escape(t), number, repeat)
        for fmt in FORMATS:
            caps = Capabilities(formatting=fmt)  # type: ignore[arg-type]
            us = best_us(lambda o=out, c=caps: render(o, c), number, repeat)
            worst = max(worst, us)
            info(f"{name:5} {fmt:8} {us:6.1f} µs (html.escape alone {base:.1f} µs)")
    emit({"figure": "safe render of a 500-char message, worst format", "value": r(worst), "unit": "µs",
          "target": f"<= {TARGET_US:g} µs", "baseline": "html.escape of the same text (printed above)",
          "ok": worst <= TARGET_US})


if __name__ == "__main__":
    main()
