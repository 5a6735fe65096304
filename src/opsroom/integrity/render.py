"""Paths, diffs and the room announcement of an integrity change, safe to show anywhere.

A file name may hold a newline, an ESC sequence or a bidi override: shown raw, `x\\n[PROD] all
clear` would print a line that reads as the bot's own, and `\\x1b]8;;` would hide a link in a
terminal. Every control or format character is shown as an escape (`\\n`, `\\x1b`, `\\u202e`),
and every text passes the one masker before it leaves.
"""

from __future__ import annotations

import difflib
import unicodedata

from opsroom.integrity.events import IntegrityChanged
from opsroom.secrets.masking import mask

MAX_DIFF_LINES = 60
MAX_DIFF_CHARS = 4000
SHOWN_CHANGES = 8  # per announcement; `opsroom integrity status` lists them all
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn")


def escape(text: str, *, shown_before: bool = False) -> str:
    """`text` on one line: control, format, surrogate and separator characters as escapes; a
    backslash is doubled too (so `a\\nb` and a name with a newline never look alike), unless the
    text was escaped before (a path in an event, a diff line) and must not be escaped twice."""
    if text.isprintable() and (shown_before or "\\" not in text):
        return text
    return "".join(_escape_char(c) if (_unsafe(c) and not (shown_before and c == "\t"))
                   or (c == "\\" and not shown_before) else c for c in text)


def shown(path: str) -> str:
    """A path for people: undecodable bytes as \\xNN, control characters escaped."""
    return escape(path)


def diff(old: str, new: str, *, path: str) -> str:
    """A unified diff, at most MAX_DIFF_LINES lines, every line escaped and the whole masked."""
    name = shown(path)
    lines = difflib.unified_diff(old.split("\n"), new.split("\n"), fromfile=f"a{name}", tofile=f"b{name}",
                                 lineterm="", n=2)
    out: list[str] = []
    size = 0
    for line in lines:
        if len(out) >= MAX_DIFF_LINES or size > MAX_DIFF_CHARS:
            out.append("… (diff cut short)")
            break
        line = escape(line[:400], shown_before=True) + ("…" if len(line) > 400 else "")
        out.append(line)
        size += len(line) + 1
    return mask("\n".join(out))


def _change_line(change: dict[str, object]) -> str:
    kinds = change.get("kinds") or []
    what = ", ".join(str(k) for k in kinds) if isinstance(kinds, list) else str(kinds)
    line = f"{escape(str(change.get('path', '?')), shown_before=True)}: {escape(what)}"
    new = change.get("new")
    if isinstance(new, dict) and new.get("target") is not None and "symlink" in what:
        line += f" (now -> {escape(str(new['target']), shown_before=True)})"
    return line


def announcement(ev: IntegrityChanged, *, tag: str = "") -> str:
    """The room message: what changed, what is quarantined, how to accept (diffs follow, indented)."""
    if not ev.baseline_ok:
        new = ev.changes[0].get("new") if ev.changes else None
        reason = str(new.get("baseline")) if isinstance(new, dict) else ""
        why = {"missing": "the stored baseline is gone", "rolled back": "the stored baseline was rolled back"}.get(
            reason, "the stored baseline's signature does not verify")
        head = f"{tag}INTEGRITY ALARM on {escape(ev.site)}: {why}"
    else:
        n = len(ev.changes) + ev.more
        head = f"{tag}file integrity: {n} unaccepted change{'s' if n != 1 else ''} on {escape(ev.site)}"
    lines = [head + f" (found by {escape(ev.found_by)})"]
    for change in ev.changes[:SHOWN_CHANGES]:
        lines.append("  " + _change_line(change))
        text = change.get("diff")
        if isinstance(text, str) and text:
            lines += ["    " + ln for ln in text.split("\n")]
    hidden = len(ev.changes) - SHOWN_CHANGES + ev.more
    if hidden > 0:
        lines.append(f"  and {hidden} more (`opsroom integrity status`)")
    if ev.quarantined:
        lines.append("quarantined until accepted: " + ", ".join(escape(r) for r in ev.quarantined))
    lines.append("review, then `opsroom integrity accept [PATH...]` on the server host")
    return mask("\n".join(lines))
