"""Label matchers as Prometheus writes them: `alertname=~"HighLatency.*", severity="page"`.

Used by rules (`when: {alert: ...}`) and by silences. Regular expressions are anchored, as in
Prometheus, and compiled once when the catalog loads; a label an alert does not have matches
as the empty string (so `team!="db"` matches an alert with no team label, as Alertmanager does).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OPS = ("=~", "!~", "!=", "=")
_LABEL = r"[A-Za-z_][A-Za-z0-9_]*"
# One matcher: label, operator, then a double-quoted value (with \" and \\) or a bare word.
_ONE = re.compile(rf'\s*({_LABEL})\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|([^,"\s]*))\s*(,|$)')
MAX_MATCHERS = 32


# Python's re backtracks without bound: `(a+)+$` against 40 a's and a b runs for hours, and a
# silence's matchers run on the event loop for every alert received and listed. So a silence's
# regular expression may not nest a repetition inside another (or repeat an alternation), may not
# refer back to a group, and has at most two wide repetitions (`.*foo.*` is fine; each more one
# multiplies the work by the label's length).
# The stdlib's own regex parser (no stubs; `sre_parse` is its deprecated alias).
sre: Any = importlib.import_module("re._parser")
MAX_REGEX = 256
_WIDE = 16  # a repetition that may run further than this counts as wide
_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, *([sre.POSSESSIVE_REPEAT] if hasattr(sre, "POSSESSIVE_REPEAT") else [])}


def regex_cost(pattern: str) -> str | None:
    """Why matching this regex could take time beyond a bound, or None when it cannot."""
    if len(pattern) > MAX_REGEX:
        return f"it is {len(pattern)} characters; at most {MAX_REGEX}"
    wide = 0

    def walk(items: Any, repeated: bool) -> str | None:
        nonlocal wide
        for op, av in items:
            if op in _REPEATS:
                if repeated:
                    return "it repeats a repetition, as in (a+)+, which can take exponential time"
                if av[1] > _WIDE:
                    wide += 1
                found = walk(av[2], True)
            elif op == sre.BRANCH:
                if repeated:
                    return "it repeats an alternation, as in (a|ab)+, which can take exponential time"
                found = next((w for w in (walk(b, repeated) for b in av[1]) if w), None)
            elif op in (sre.GROUPREF, sre.GROUPREF_EXISTS):
                return "it refers back to a group, which can take exponential time"
            elif op == sre.SUBPATTERN:
                found = walk(av[3], repeated)
            elif op in (sre.ASSERT, sre.ASSERT_NOT):
                found = walk(av[1], repeated)
            else:
                found = None
            if found:
                return found
        return None

    try:
        why = walk(sre.parse(pattern), False)
    except (re.error, RecursionError, OverflowError):
        return None  # parse_matchers reports a pattern that does not compile
    if why is None and wide > 2:
        why = f"it has {wide} open-ended repetitions; at most 2 (each more multiplies the work)"
    return why


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.label, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        assert self.regex is not None
        found = self.regex.fullmatch(got) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.label}{self.op}"{escaped}"'

    @property
    def is_regex(self) -> bool:
        return self.op in ("=~", "!~")

    @property
    def is_equal(self) -> bool:
        return self.op in ("=", "=~")


def parse_matchers(text: str | list[str]) -> tuple[Matcher, ...]:
    """`a="x", b=~"y.*"` (or a list of such strings) -> matchers; ValueError says what is wrong."""
    parts = text if isinstance(text, list) else [text]
    found: list[Matcher] = []
    for part in parts:
        body = part.strip()
        if body.startswith("{") and body.endswith("}"):
            body = body[1:-1]  # `{a="x"}` as Prometheus and amtool also accept
        at = 0
        while at < len(body):
            m = _ONE.match(body, at)
            if m is None or m.end() == at:
                shown = body[at:at + 30]
                raise ValueError(f"cannot read a label matcher at {shown!r}: write label=\"value\", "
                                 'label!="value", label=~"regex" or label!~"regex", separated by commas')
            label, op, quoted, bare = m.group(1), m.group(2), m.group(3), m.group(4)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
            regex = None
            if op in ("=~", "!~"):
                try:
                    regex = re.compile(value)
                except re.error as exc:
                    raise ValueError(f"{label}{op}: not a valid regular expression: {exc}") from None
                why = regex_cost(value)
                if why is not None:
                    raise ValueError(f"{label}{op}: the regular expression could take too long on a long label: "
                                     f"{why}; write a simpler one, e.g. alertname=~\"Disk.*\"")
            found.append(Matcher(label, op, value, regex))
            at = m.end()
            if m.group(5) == "," and at >= len(body):
                break  # a trailing comma, as Prometheus allows
    if not found:
        raise ValueError('no label matchers; write e.g. alertname=~"HighLatency.*", severity="page"')
    if len(found) > MAX_MATCHERS:
        raise ValueError(f"{len(found)} matchers; at most {MAX_MATCHERS}")
    return tuple(found)


def all_match(matchers: tuple[Matcher, ...], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
