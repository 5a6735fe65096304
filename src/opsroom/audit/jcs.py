"""RFC 8785 JSON Canonicalization Scheme: the one byte form of a value that is hashed and signed.

Strings are written as RFC 8259 with only the mandatory escapes (what json.dumps does with
ensure_ascii=False), object keys sorted by their UTF-16 code units, numbers as ECMAScript's
Number.prototype.toString writes an IEEE double. A value JSON cannot carry (NaN, a lone
surrogate, a non-string key) is refused rather than written some other way, so two different
values never share a canonical form.
"""

from __future__ import annotations

import json
import math
from typing import Any

_string = json.encoder.encode_basestring  # the C escaper, mandatory escapes only
_SAFE_INT = 2**53


class NotCanonical(ValueError):
    """The value has no RFC 8785 form."""


def number(value: float | int) -> str:
    """ECMAScript's shortest round-trip form of a double (RFC 8785 section 3.2.2.3)."""
    if isinstance(value, int) and -_SAFE_INT <= value <= _SAFE_INT:
        return str(value)
    x = float(value)
    if not math.isfinite(x):
        raise NotCanonical(f"{value!r} has no JSON form")
    if x == 0:
        return "0"
    text = repr(x)
    if "e" not in text:  # 1e-4 <= |x| < 1e16: Python's repr is ECMAScript's, less a trailing ".0"
        return text[:-2] if text.endswith(".0") else text
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac.rstrip("0")) if frac.rstrip("0") else whole
    point = len(whole) + (int(exp) if exp else 0)  # value = 0.digits * 10**point, before stripping
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    k, n = len(digits), point
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * -n + digits
    else:
        e = n - 1
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e > 0 else "-") + str(abs(e))
    return sign + out


def _key(k: str) -> bytes:
    return k.encode("utf-16-be", "surrogatepass")


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_checked(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, (int, float)):
        out.append(number(value))
    elif isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise NotCanonical("object keys must be strings")
        out.append("{")
        # Code point order is UTF-16 order unless a key holds a character past U+FFFF.
        keys = sorted(value) if all(k.isascii() for k in value) else sorted(value, key=_key)
        for i, k in enumerate(keys):
            if i:
                out.append(",")
            out.append(_checked(k))
            out.append(":")
            _write(value[k], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise NotCanonical(f"{type(value).__name__} has no JSON form")


def _checked(s: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: I-JSON (RFC 7493) refuses it
        raise NotCanonical("a string holds a lone surrogate") from exc
    return _string(s)


def dumps(value: Any) -> str:
    """The canonical text of `value`; encode it as UTF-8 to hash or sign it."""
    out: list[str] = []
    _write(value, out)
    return "".join(out)


def canonical(value: Any) -> bytes:
    return dumps(value).encode("utf-8")
