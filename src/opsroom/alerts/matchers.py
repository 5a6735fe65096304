"""Label matchers as Prometheus writes them: `alertname=~"HighLatency.*", severity="page"`.

Used by rules (`when: {alert: ...}`) and by silences. Regular expressions are anchored, as in
Prometheus, and compiled once when the catalog loads; a label an alert does not have matches
as the empty string (so `team!="db"` matches an alert with no team label, as Alertmanager does).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

OPS = ("=~", "!~", "!=", "=")
_LABEL = r"[A-Za-z_][A-Za-z0-9_]*"
# One matcher: label, operator, then a double-quoted value (with \" and \\) or a bare word.
_ONE = re.compile(rf'\s*({_LABEL})\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|([^,"\s]*))\s*(,|$)')
MAX_MATCHERS = 32


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
