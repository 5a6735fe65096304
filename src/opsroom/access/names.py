"""One normal form for user names, used by every door: NFKC, case-folded, a safe ASCII alphabet.

Lookalikes must not become a second account: `Boss`, its fullwidth form and `boss` are one
name after normalisation (the column's unique constraint then refuses the second), while
Cyrillic letters, zero-width characters and markup are refused outright instead of being
stored and shown to an approver as if they were someone else.
"""

from __future__ import annotations

import re
import unicodedata

from opsroom.errors import Invalid

MAX_NAME = 64
# Starts with a letter; then letters, digits, '.', '_' and '-'. Fits the users.name column.
NAME_RE = re.compile(rf"[a-z][a-z0-9._-]{{0,{MAX_NAME - 1}}}")
ALLOWED = (f"1 to {MAX_NAME} characters: a lowercase letter first, then a-z, 0-9, '.', '_' or '-' "
           "(upper case is folded to lower case)")


def name_problem(raw: str) -> str | None:
    """Why `raw` cannot be a user name, or None when its normal form is valid."""
    if len(raw) > 4 * MAX_NAME:  # before NFKC, which may expand: never normalise a megabyte
        return f"the user name is too long ({len(raw)} characters)"
    name = unicodedata.normalize("NFKC", raw).casefold()
    if NAME_RE.fullmatch(name):
        return None
    if not name:
        return "the user name is empty"
    if len(name) > MAX_NAME:
        return f"the user name is too long ({len(name)} characters)"
    bad = sorted({c for c in name if not re.fullmatch(r"[a-z0-9._-]", c)})
    if bad:
        shown = ", ".join(f"U+{ord(c):04X}" + (f" {unicodedata.name(c, '')}".rstrip()) for c in bad[:5])
        return f"the user name holds characters that are not allowed ({shown})"
    return "the user name must start with a letter"


def normalise_name(raw: str) -> str:
    """The stored form of a user name; raises Invalid saying what is allowed."""
    problem = name_problem(raw)
    if problem is not None:
        raise Invalid(problem, hint=f"user names are {ALLOWED}")
    return unicodedata.normalize("NFKC", raw).casefold()
