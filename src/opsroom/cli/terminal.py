"""Text for a terminal: what a runbook or a server says is shown, never obeyed.

A runbook's output, an error's detail, a user's name: all can carry escape sequences that set
the terminal's title, clear the screen, hide text, plant a clickable link (OSC 8) or, on some
terminals, write to the clipboard or answer back into the input. `clean` keeps the text and drops
every control sequence and control character except newline and tab.
"""

from __future__ import annotations

import re
import sys
from typing import TextIO

_SEQUENCES = re.compile(
    r"""
      (?:\x1b\]|\x9d) [^\x07\x1b\x9c]* (?:\x07|\x1b\\|\x9c)?          # OSC ... BEL/ST (title, OSC 8 link, clipboard)
    | (?:\x1b[P X ^ _]|[\x90\x98\x9e\x9f]) .*? (?:\x1b\\|\x9c|\Z)     # DCS, SOS, PM, APC ... ST
    | (?:\x1b\[|\x9b) [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]?          # CSI (colours, cursor moves, clear screen)
    | \x1b [\x20-\x2f]* [\x30-\x7e]?                                  # any other escape (reset, charset)
    """,
    re.VERBOSE | re.DOTALL,
)
# C0 but newline and tab, DEL, C1; and the bidi overrides that reorder what a reader sees.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """`text` with escape sequences and control characters removed (newline and tab kept)."""
    text = text.replace("\r\n", "\n")
    return _CONTROLS.sub("", _SEQUENCES.sub("", text))


def write(text: str, *, stream: TextIO | None = None, end: str = "\n") -> None:
    """Print text that came from outside this process (the server, a runbook, the store)."""
    target = stream if stream is not None else sys.stdout
    target.write(clean(text) + end)
    target.flush()


def error(message: str, hint: str | None = None) -> None:
    """One clear error line on stderr, and its hint: never a traceback."""
    write(f"error: {message}", stream=sys.stderr)
    if hint:
        write(f"  hint: {hint}", stream=sys.stderr)
