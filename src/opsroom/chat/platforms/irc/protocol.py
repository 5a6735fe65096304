"""The IRC wire, the little of it opsroom needs (RFC 1459/2812 and IRCv3 message tags): parse a
line, build a line that cannot carry a second command, split text to the 512-byte limit.

Everything sent goes through `line()`, which refuses CR, LF and NUL in any part: a runbook's
output or a relayed line containing "\r\nPRIVMSG #other :pwned" can only ever be text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_LINE_BYTES = 512  # including the CRLF (RFC 2812 2.3)
# What the server puts in front of our text when it relays it (":nick!user@host "): hosts are
# at most 63 bytes (RFC 1123 labels), so this much is kept free of every PRIVMSG we send.
HOST_RESERVE = 63
# mIRC colour codes and the bold/italic/underline/reverse/monospace/strike/reset toggles.
_FORMATTING = re.compile(r"\x03(\d{1,2}(,\d{1,2})?)?"
                         r"|\x04[0-9a-fA-F]{0,6}(,[0-9a-fA-F]{1,6})?"
                         r"|[\x02\x0f\x11\x16\x1d\x1e\x1f]")
_UNSAFE = re.compile(r"[\r\n\x00]")


class UnsafeLine(ValueError):
    """A line part contained CR, LF or NUL: it would have become a second command."""


@dataclass(frozen=True)
class Line:
    command: str
    params: list[str]
    prefix: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def nick(self) -> str:
        return self.prefix.split("!", 1)[0]


def _unescape_tag(value: str) -> str:
    out, i = [], 0
    table = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            out.append(table.get(value[i + 1], value[i + 1]))
            i += 2
            continue
        if ch != "\\":
            out.append(ch)
        i += 1
    return "".join(out)


def parse(raw: str) -> Line | None:
    """One received line (without CRLF), or None when it is empty or malformed."""
    text = raw.rstrip("\r\n")
    tags: dict[str, str] = {}
    if text.startswith("@"):
        head, _, text = text.partition(" ")
        for item in head[1:].split(";"):
            key, _, value = item.partition("=")
            if key:
                tags[key] = _unescape_tag(value)
    text = text.lstrip(" ")
    prefix = ""
    if text.startswith(":"):
        prefix, _, text = text[1:].partition(" ")
    trailing = None
    if " :" in text:
        text, _, trailing = text.partition(" :")
    elif text.startswith(":"):
        text, trailing = "", text[1:]
    parts = text.split()
    if not parts:
        return None
    params = parts[1:] + ([trailing] if trailing is not None else [])
    return Line(parts[0].upper(), params, prefix, tags)


def line(command: str, *params: str, trailing: str | None = None) -> bytes:
    """One line to send, CRLF-terminated. Middle params may contain neither spaces nor a
    leading colon; no part may contain CR, LF or NUL (refused, never silently passed)."""
    for p in (command, *params, trailing or ""):
        if _UNSAFE.search(p):
            raise UnsafeLine(f"{command}: a parameter contains CR, LF or NUL")
    for p in params:
        if not p or " " in p or p.startswith(":"):
            raise UnsafeLine(f"{command}: {p!r} cannot be a middle parameter")
    text = " ".join((command, *params))
    if trailing is not None:
        text += " :" + trailing
    data = text.encode("utf-8", "replace") + b"\r\n"
    if len(data) > MAX_LINE_BYTES:
        raise UnsafeLine(f"{command}: {len(data)} bytes is over the 512-byte line limit")
    return data


def strip_formatting(text: str) -> str:
    """No colour, bold or reverse codes from outside text, and no CTCP (\\x01) framing."""
    return _FORMATTING.sub("", text).replace("\x01", "")


def clean(text: str) -> str:
    """What may go in a trailing parameter: no CR, LF, NUL; formatting codes removed."""
    return _UNSAFE.sub(" ", strip_formatting(text))


def split_text(text: str, budget: int) -> list[str]:
    """Cut one line of text into pieces of at most `budget` UTF-8 bytes, at spaces when one is
    near, never inside a character."""
    pieces: list[str] = []
    rest = text
    while len(rest.encode()) > budget:
        cut = rest.encode()[:budget].decode("utf-8", "ignore")
        space = cut.rfind(" ")
        if space > len(cut) // 2:
            cut = cut[:space]
        pieces.append(cut)
        rest = rest[len(cut):].lstrip(" ")
    if rest:
        pieces.append(rest)
    return pieces


_FOLD = str.maketrans("[]\\~", "{}|^")


def fold(name: str) -> str:
    """IRC's case mapping (rfc1459): nicks and channels compare case-insensitively, and
    []\\~ are the upper case of {}|^."""
    return name.lower().translate(_FOLD)
