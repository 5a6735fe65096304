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


class Masker:
    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
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
            if new - self._values:
                self._values |= new
                # Longest first: a secret that contains another is masked whole.
                ordered = sorted(self._values, key=len, reverse=True)
                self._pattern = re.compile("|".join(map(re.escape, ordered)))

    def mask(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

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
