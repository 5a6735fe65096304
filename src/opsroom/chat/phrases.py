"""How people ask, read as the commands they mean: "status of web" is `is web running`.

Only reading commands come out of here: a question, however it is worded, is never turned
into something that runs or decides. A line the catalog's aliases match is left as typed
(the operator's own words win), so this cannot shadow an alias either.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from opsroom.catalog.catalog import Catalog

_END = r"\s*[?!.]*\s*$"  # "Is web down??" reads like "is web down"
_WHAT = r"(?:what['\u2019]?s|what\s+is)"  # what's, whats, what\u2019s (a phone's apostrophe), what is
_THE = r"(?:the\s+)?"


@dataclass(frozen=True)
class Phrase:
    pattern: str  # as documented in docs/chat.md
    regex: re.Pattern[str]
    means: Callable[[Catalog, dict[str, str]], str]


def _about(catalog: Catalog, found: dict[str, str]) -> str:
    """A name alone: a system gets its health, anything else is asked about as a service
    (an unknown name is then answered with the known service names)."""
    name = re.sub(r"^the\s+", "", found["name"], flags=re.IGNORECASE)
    system, _ = catalog.find_system(name)
    return f"health {name}" if system is not None else f"is {name} running"


def _fixed(command: str) -> Callable[[Catalog, dict[str, str]], str]:
    return lambda _catalog, _found: command


def _phrase(pattern: str, regex: str, means: Callable[[Catalog, dict[str, str]], str]) -> Phrase:
    return Phrase(pattern, re.compile("^" + regex + _END, re.IGNORECASE), means)


_NAME = r"(?P<name>[^=]+?)"  # never a key=value word: `run rotate token=x health check` is a run
_STATE = r"(?:running|down|up|ok|okay|alive|dead|healthy|broken|working|fine)"

PHRASES: list[Phrase] = [
    _phrase("what's the status of {name}", rf"{_WHAT}\s+{_THE}(?:status|state)\s+(?:of|for|on)\s+{_NAME}",
            _about),
    _phrase("status of {name}", rf"{_WHAT}?\s*{_THE}(?:status|state|health)\s+(?:of|for|on)\s+{_NAME}", _about),
    _phrase("what's up with {name}", rf"{_WHAT}\s+(?:up|going\s+on|wrong)\s+with\s+{_NAME}", _about),
    _phrase("how is {name}", rf"how(?:['\u2019]?s|\s+is|\s+are)\s+{_NAME}(?:\s+doing)?", _about),
    _phrase("is {name} down", rf"is\s+{_NAME}\s+{_STATE}", _about),
    # The seed's "Run System A Health Check": the read-only health answer, never a runbook.
    _phrase("run {name} health check", rf"(?:please\s+)?(?:run\s+)?(?:a\s+)?{_NAME}\s+health\s*-?\s*check", _about),
    _phrase("health check {name}",
            rf"(?:please\s+)?(?:run\s+)?(?:a\s+)?health\s*-?\s*check\s+(?:of\s+|on\s+|for\s+)?{_NAME}", _about),
    _phrase("status {name}", rf"status\s+{_NAME}", _about),
    _phrase("what's the status", rf"{_WHAT}\s+{_THE}status|{_WHAT}\s+going\s+on", _fixed("status")),
    _phrase("show executions",
            r"(?:show\s+(?:me\s+)?|list\s+)?(?:the\s+)?(?:recent\s+|last\s+|latest\s+)?(?:executions|runs)",
            _fixed("executions")),
]


def rephrase(catalog: Catalog, text: str, *, alias_matches: Callable[[str], bool]) -> str:
    """The command `text` means, or `text` itself when it is not one of the phrasings above."""
    if alias_matches(text):
        return text
    # "Run System A Health Check" would also read as `run {args}`: the phrases go first.
    for phrase in PHRASES:
        m = phrase.regex.match(text)
        if m is not None:
            return phrase.means(catalog, m.groupdict())
    return text
