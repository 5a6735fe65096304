"""Safe output for every platform: what outside text may and may not do once a platform shows it.

Text from outside (runbook and check output, service names, alert labels, what people typed
and the bot relays) is neutralised (no terminal or IRC control codes, no invisible or bidi
tricks, no mass mention, no platform mention syntax), then escaped for the platform's markup,
then cut to the platform's size. Only what opsroom adds itself after that (the adapter's
mentions, the link to the whole text, buttons) may be markup. docs/chat/safe-output.md says
why each rule exists. render() runs for every message on every platform, so the common case
(ASCII text, nothing to remove) takes a few regex scans and no Python loop.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from opsroom.chat.base import Capabilities, Formatting, Mention, Outgoing

# --- neutralise ----------------------------------------------------------------------------

# Terminal control: CSI (colours, cursor moves, screen clears), string sequences (OSC incl.
# OSC 8 hyperlinks and window titles, DCS, SOS, PM, APC) with their 7- and 8-bit introducers,
# the other ESC sequences, lone ESC, IRC formatting (colour codes take their digits along, as
# an IRC client would), and every other C0/C1 control but \n and \t. An unterminated string
# sequence runs to the end of its line: a runbook cannot hide the rest of its output.
_TERMINAL = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|\x03(?:[0-9]{1,2}(?:,[0-9]{1,2})?)?"
    r"|\x04(?:[0-9a-fA-F]{6}(?:,[0-9a-fA-F]{6})?)?"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)
_ANY_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CR = re.compile(r"\r\n?")

# Invisible characters that hide or reorder text: zero-width space and joiners that no script
# needs, soft hyphen, Hangul fillers (blank "names"), bidi embeddings/overrides/isolates
# (Trojan Source: text that reads differently from what it is), deprecated format controls,
# interlinear annotations, tag characters (hidden ASCII). ZWJ/ZWNJ, LRM/RLM and variation
# selectors stay: emoji sequences and several scripts need them, and they reorder nothing.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb\U000e0000-\U000e007f]"
)
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone ones (surrogateescape'd bytes) cannot be sent
_LINE_SEPARATOR = re.compile("[\u2028\u2029]")

# Words that notify a whole channel on some platform after an at-sign: Slack/Mattermost
# @channel @here @all, Discord @everyone @here, Matrix @room, Zulip @all/@everyone/@stream/@topic.
_MASS = frozenset({"all", "channel", "everyone", "here", "room", "stream", "topic"})
# Lookalikes a word is folded through before that comparison (after NFKC and casefold, which
# already turn fullwidth and mathematical letters into ASCII): Cyrillic, Greek, Armenian.
_CONFUSABLE = str.maketrans(
    "\u0430\u0441\u0435\u04bb\u0456\u04cf\u043e\u0440\u0455\u0443\u0445\u0501\u0578"
    "\u057d\u03b1\u03bf\u03bd\u03c5\u03b9\u03b5\u03c1\u03c4\u03b7\u03ba\u0131\u0251",
    "acehilopsyxdnuaovuieptnkia",
)
_ZWSP = "\u200b"
_BREAK = "\\g<0>" + _ZWSP  # re.sub template: what matched, then a zero-width space
# Mention-shaped spots, each broken by a zero-width space after its first character (separate
# patterns: one alternation is several times slower to scan). Nothing past that character is
# consumed, so overlapping forms (`<@here>`) are all seen:
#  - an at-sign (ASCII, fullwidth, small) before a word, with styling or joiners between;
#  - `<!here>`, `<!subteam^S1>`, `<@U123>` (Slack), `<at>` (Teams), fullwidth forms included;
#  - matrix.to permalinks (Matrix clients draw them as pills) and tg:// links (Telegram).
# The common case, an ASCII at-sign and word, needs no callback; the odd ones (a wide at-sign,
# a joiner in between, a non-ASCII letter) are folded one by one in _at.
_AT = re.compile(r"@(?=[*_~]*(?:all|channel|everyone|here|room|stream|topic)(?![^\W_]))", re.IGNORECASE)
_AT_ODD = re.compile(r"@(?=[*_~]*[^\W_]*[^\x00-\x7f])(?=[*_~\u200c-\u200f\ufe00-\ufe0f]*([^\W_]+))")
_AT_WIDE = re.compile(r"[\uff20\ufe6b](?=[*_~\u200c-\u200f\ufe00-\ufe0f]*([^\W_]+))")
_ANGLE = re.compile(r"<(?=[!@\uff01\ufe57\uff20\ufe6b]|[aA\uff41\uff21][tT\uff54\uff34]\b)")
_ANGLE_WIDE = re.compile(r"[\uff1c\ufe64](?=[!@\uff01\ufe57\uff20\ufe6b]|[aA\uff41\uff21][tT\uff54\uff34]\b)")
_DOT_TO = re.compile(r"\.[tT][oO]/")
_MATRIX_TO = re.compile(r"(?i)matrix(?=\.to/)")
_TG = re.compile(r"(?i)tg(?=://)")
_UNICODE_HINT = re.compile(
    "[\ud800-\udfff\u2028\u2029\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb\U000e0000-\U000e007f]"
)


def _at(m: re.Match[str]) -> str:
    word = m.group(1)
    if len(word) > 12:
        return m.group(0)  # longer than any mass word in any of its lookalike spellings
    folded = word.lower() if word.isascii() else unicodedata.normalize("NFKC", word).casefold().translate(_CONFUSABLE)
    return m.group(0) + _ZWSP if folded in _MASS else m.group(0)


def neutralise(text: str) -> str:
    """No terminal escapes or control characters, and no mass mention (@channel, @here, ...)."""
    if _ANY_CONTROL.search(text):
        if "\r" in text:  # a progress bar's carriage returns read as the lines they were
            text = _CR.sub("\n", text)
        text = _TERMINAL.sub("", text)
    if not text.isascii() and _UNICODE_HINT.search(text):
        text = _SURROGATE.sub("\ufffd", text)
        text = _LINE_SEPARATOR.sub("\n", text)
        text = _INVISIBLE.sub("", text)
    # Patterns that start with a literal are scanned fast; the rarer wide forms only when present.
    if "@" in text:
        text = _AT.sub(_BREAK, text)
    if "<" in text:
        text = _ANGLE.sub(_BREAK, text)
    if not text.isascii():
        if "@" in text:
            text = _AT_ODD.sub(_at, text)
        if "\uff20" in text or "\ufe6b" in text:
            text = _AT_WIDE.sub(_at, text)
        if "\uff1c" in text or "\ufe64" in text:
            text = _ANGLE_WIDE.sub(_BREAK, text)
    if "://" in text:
        text = _TG.sub(_BREAK, text)
    if _DOT_TO.search(text):
        text = _MATRIX_TO.sub(_BREAK, text)
    return text


# --- escape --------------------------------------------------------------------------------

# html: Matrix formatted_body, Telegram parse_mode=HTML (which knows only &lt; &gt; &amp; &quot;
# and numeric entities), Teams. Newlines stay \n: Telegram rejects <br>; Matrix and Teams
# adapters turn \n into <br> themselves.
_HTML = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"))
# mrkdwn (Slack): only &, < and > have meaning that matters (links, mentions, <!here>) and only
# they can be escaped; *bold* _italic_ ~strike~ `code` have no escape in mrkdwn and can neither
# notify, link nor hide text, so they are left as typed (output keeps its globs and names).
_MRKDWN = _HTML[:3]
# markdown (Mattermost, CommonMark-like): backslash-escape what builds links, images, HTML,
# autolinks, code and emphasis anywhere in a line, and `&` so no entity is decoded...
_MARKDOWN = tuple((c, "\\" + c) for c in "\\`*_~[]<>&|")  # the backslash first
# ...and what only means something at the start of a line: headings, list items, setext
# underlines and thematic breaks (# + - =), ordered lists (1. 1)).
# (Matched after a newline, which the text is given in front: a pattern that starts with a
# literal is scanned several times faster than one that starts with ^.)
_MD_LINE_START = re.compile(r"\n([ \t]*(?:[0-9]{1,9}(?=[.)]))?)([#+\-=.)])")


def _replace(text: str, pairs: tuple[tuple[str, str], ...]) -> str:
    # str.replace per character beats str.translate, which is slow on non-ASCII text.
    for char, entity in pairs:
        if char in text:
            text = text.replace(char, entity)
    return text


def escape(text: str, fmt: Formatting) -> str:
    """Markup in the text shows as text on this platform."""
    if fmt == "html":
        return _replace(text, _HTML)
    if fmt == "mrkdwn":
        return _replace(text, _MRKDWN)
    if fmt == "markdown":
        text = _replace(text, _MARKDOWN)
        return _MD_LINE_START.sub(r"\n\1\\\2", "\n" + text)[1:]
    return text  # plain, irc: no markup; neutralise() already removed IRC's formatting codes


# --- render --------------------------------------------------------------------------------

_AUTHOR_MAX = 64  # a display name is a name, not a paragraph
# Our own link to the whole text: only http(s), nothing that closes the markup around it.
_SAFE_LINK = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&*+,;=%]+")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_ENTITY_MAX = len("&quot;")


def _units(text: str) -> int:
    """Length in UTF-16 code units: what Telegram and Teams count, and never less than the
    code points Slack, Mattermost and Matrix count, so a cut text fits on every platform."""
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) // 2


def _index_for_units(text: str, units: int) -> int:
    """The longest prefix of text (in code points) that is at most `units` UTF-16 units."""
    if text.isascii() or not _ASTRAL.search(text):
        return min(len(text), units)
    used = 0
    for i, ch in enumerate(text):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > units:
            return i
    return len(text)


def _tail(link: str | None, fmt: Formatting) -> str:
    """The last line of a cut message: where the whole text is."""
    if link is None or not _SAFE_LINK.fullmatch(link):
        return "\n… (cut)"
    if fmt == "html":
        return f'\n… (cut: <a href="{_replace(link, _HTML)}">the whole text</a>)'
    if fmt == "mrkdwn":
        return f"\n… (cut: <{_replace(link, _MRKDWN)}|the whole text>)"
    if fmt == "markdown":
        return f"\n… (cut: [the whole text]({link.replace('(', '%28').replace(')', '%29')}))"
    return f"\n… (cut: the whole text is at {link})"


def _cut_point(text: str, index: int, fmt: Formatting) -> int:
    """Move a cut back so it never splits an escape, a combined character, or a line needlessly."""
    newline = text.rfind("\n", max(index // 2, index - 200), index)
    if newline > 0:
        index = newline  # a whole last line reads better than half of one (if it costs little)
    if fmt in ("html", "mrkdwn"):
        amp = text.rfind("&", max(0, index - _ENTITY_MAX + 1), index)
        if amp != -1 and ";" not in text[amp:index]:
            index = amp  # inside &amp; &lt; &gt; &quot;
    elif fmt == "markdown":
        slashes = len(text[:index]) - len(text[:index].rstrip("\\"))
        if slashes % 2:
            index -= 1  # between a backslash and the character it escapes
    # Not between a character and its combining marks, joiners or variation selectors.
    while 0 < index < len(text) and (unicodedata.combining(text[index]) or text[index] in "\u200c\u200d\ufe0e\ufe0f"
                                     or text[index - 1] == "\u200d"):
        index -= 1
    return index


def _author(out: Outgoing, fmt: Formatting) -> str:
    """`name (platform): ` before a relayed line; one line, so a name cannot fake a bot line."""
    name = " ".join(neutralise(out.author or "someone").split())[:_AUTHOR_MAX] or "someone"
    via = " ".join(neutralise(out.via).split())[:_AUTHOR_MAX] if out.via else ""
    head = f"{name} ({via})" if via else name
    # Cut mid-way, the name may end in the at-sign of a defused mention: keep it defused.
    return escape(neutralise(head), fmt) + ": "


def render(out: Outgoing, caps: Capabilities, *, mention: Callable[[Mention], str] | None = None) -> str:
    """The message body for one platform: author named for a relayed line, neutralised,
    escaped, cut to the platform's size with a link to the whole text, mentions added last."""
    fmt = caps.formatting
    text = escape(neutralise(out.text), fmt)
    if out.kind == "person" or out.author is not None:
        prefix = _author(out, fmt)
        if fmt == "irc" and "\n" in text:
            # Each IRC line is a message of its own from the bot's nick: every one says who.
            text = text.replace("\n", "\n" + prefix)
        text = prefix + text
    mentions = " " + " ".join(mention(m) for m in out.mentions) if out.mentions and mention is not None else ""
    room = caps.max_chars - _units(mentions)
    if _units(text) > room:
        tail = _tail(out.link, fmt)
        if _units(tail) > room:
            tail = "…"
        keep = _cut_point(text, _index_for_units(text, max(0, room - _units(tail))), fmt)
        text = text[:keep].rstrip(" \t\n") + tail
    return text + mentions
