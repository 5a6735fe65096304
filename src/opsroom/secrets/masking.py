"""The one masker: every known secret value, and its common encodings, becomes `****`.

Every sink (API responses, rooms, audit details, logs, stored output, reports) passes
text through `mask`. Values are registered as they become known: secret `${VAR}`s of the
catalog at load, secret runbook parameters when a run is requested, tokens and passwords
never (they are never handed to a sink in the first place).

It is process-wide on purpose: a log line has no runtime to ask, and masking a value that
belonged to another runtime of the same process only ever hides more.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "****"
MIN_SECRET = 3  # shorter values would mask ordinary words everywhere


def encodings(value: str) -> set[str]:
    """The forms a secret commonly takes on its way into output: as is, URL, JSON, base64, hex."""
    raw = value.encode()
    forms = {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1],
             raw.hex()}
    for b64 in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = b64.decode()
        forms.add(text)
        forms.add(text.rstrip("="))
    return {f for f in forms if len(f) >= MIN_SECRET}


RECENT_MAX = 512  # forms kept in the small, often recompiled pattern before they join the big one


def _trie_pattern(values: set[str]) -> str:
    """One regex for many literals, as a trie: matching costs the text's length, not the number
    of secrets (a flat alternation of 8,000 forms took 28 ms per 4 KB line; this, 0.1 ms), and
    a value that contains another is masked whole (the optional end is greedy)."""
    trie: dict[str, Any] = {}
    for value in values:
        node = trie
        for ch in value:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        alternatives = []
        for ch, child in sorted(node.items()):
            if ch == "":
                continue
            chain = [ch]
            while len(child) == 1 and "" not in child:  # a run of single children: one literal
                (nxt, child), = child.items()
                chain.append(nxt)
            alternatives.append(re.escape("".join(chain)) + build(child))
        if not alternatives:
            return ""
        ends_here = "" in node
        if len(alternatives) == 1 and not ends_here:
            return alternatives[0]
        return "(?:" + "|".join(alternatives) + ")" + ("?" if ends_here else "")

    return build(trie)


def _compile(values: set[str]) -> re.Pattern[str] | None:
    if not values:
        return None
    try:
        return re.compile(_trie_pattern(values))
    except (RecursionError, re.error):
        # Thousands of values nested in one another: a flat alternation, longest first, has no depth.
        return re.compile("|".join(map(re.escape, sorted(values, key=len, reverse=True))))


class Masker:
    """Known secret forms in two patterns: a big one recompiled rarely and a small one for the
    newest values, so registering a run's secrets never recompiles everything seen before."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._recent: set[str] = set()
        self._patterns: tuple[re.Pattern[str], ...] = ()
        self._base: re.Pattern[str] | None = None
        self._lock = threading.Lock()  # logging may call from other threads

    def add(self, *values: Any) -> None:
        new: set[str] = set()
        for value in values:
            if value is None:
                continue
            text = str(value)
            if len(text) < MIN_SECRET:
                continue
            new |= encodings(text)
        with self._lock:
            new -= self._values
            if not new:
                return
            self._values |= new
            self._recent |= new
            if len(self._recent) > RECENT_MAX:
                self._base = _compile(self._values)
                self._recent = set()
            recent = _compile(self._recent)
            self._patterns = tuple(p for p in (self._base, recent) if p is not None)

    def mask(self, text: str) -> str:
        patterns = self._patterns
        if not patterns or not text:
            return text
        if len(patterns) == 1:
            return patterns[0].sub(MASK, text)
        # Two patterns: every character either one covers is hidden, overlaps merged into one mask.
        spans = sorted(m.span() for p in patterns for m in p.finditer(text) if m.end() > m.start())
        if not spans:
            return text
        out: list[str] = []
        pos = 0
        start, end = spans[0]
        for s, e in spans[1:]:
            if s <= end:
                end = max(end, e)
                continue
            out += [text[pos:start], MASK]
            pos, start, end = end, s, e
        out += [text[pos:start], MASK, text[end:]]
        return "".join(out)

    def mask_obj(self, value: Any) -> Any:
        """Strings inside dicts, lists and tuples masked; other values as they are."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {k: self.mask_obj(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.mask_obj(v) for v in value)
        return value

    def __contains__(self, value: str) -> bool:
        return value in self._values


MASKER = Masker()

_SECRET_WORDS = ("PASSWORD", "PASSWD", "TOKEN", "SECRET")


def secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret: DB_PASSWORD, GITHUB_TOKEN,
    API_KEY, APIKEY. KEY counts only as a word of its own or at the end, so MONKEY_HOST and
    KEYBOARD do not hide ordinary values."""
    upper = name.upper()
    return (any(word in upper for word in _SECRET_WORDS) or upper.endswith("KEY")
            or "KEY" in upper.split("_"))


def register(*values: Any) -> None:
    MASKER.add(*values)


def mask(text: str) -> str:
    return MASKER.mask(text)


def mask_obj(value: Any) -> Any:
    return MASKER.mask_obj(value)
