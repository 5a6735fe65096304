"""Shell words as people type them in chat, with where each was written (for masking secrets)."""

from __future__ import annotations


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Shell words as shlex.split (POSIX) reads them, each with the span it was written in.

    The spans let redact() mask a secret however it was typed (`a\\ b`, 'a b', "a b"), and
    _run() uses the same words, so what is masked is exactly what is run.
    """
    words: list[tuple[str, int, int]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n:
            return words
        start, buf = i, []
        while i < n and text[i] not in _SPACE:
            c = text[i]
            if c == "\\":
                if i + 1 >= n:
                    raise ValueError("No escaped character")
                buf.append(text[i + 1])
                i += 2
            elif c == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    raise ValueError("No closing quotation")
                buf.append(text[i + 1:end])
                i = end + 1
            elif c == '"':
                i += 1
                while True:
                    if i >= n:
                        raise ValueError("No closing quotation")
                    c = text[i]
                    if c == '"':
                        i += 1
                        break
                    if c == "\\" and i + 1 < n and text[i + 1] in '"\\':
                        c = text[i + 1]
                        i += 1
                    buf.append(c)
                    i += 1
            else:
                buf.append(c)
                i += 1
        words.append(("".join(buf), start, i))


_SPACE = " \t\r\n"  # shlex's whitespace
