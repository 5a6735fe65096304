"""Safe output for every platform (placeholder; the full version replaces this).

Text from outside (runbook and check output, service names, alert labels, what people typed
and the bot relays) is neutralised before any platform shows it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

from opsroom.chat.base import Capabilities, Formatting, Mention, Outgoing

_CONTROLS = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def neutralise(text: str) -> str:
    """No terminal escapes or control characters, and no mass mention (@channel, @here, ...)."""
    text = _CONTROLS.sub("", text)
    return re.sub(r"@(channel|here|everyone|room|all)\b", "@\u200b\\1", text, flags=re.IGNORECASE)


def escape(text: str, fmt: Formatting) -> str:
    """Markup in the text shows as text on this platform."""
    if fmt in ("html",):
        return html.escape(text, quote=False)
    if fmt == "mrkdwn":
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text


def render(out: Outgoing, caps: Capabilities, *, mention: Callable[[Mention], str] | None = None) -> str:
    """The message body for one platform: author named for a relayed line, neutralised,
    escaped, cut to the platform's size with a link to the whole text, mentions added last."""
    text = neutralise(out.text)
    if out.author:
        text = f"{out.author}" + (f" ({out.via})" if out.via else "") + f": {text}"
    text = escape(text, caps.formatting)
    if len(text) > caps.max_chars:
        tail = f"… (cut; all of it: {out.link})" if out.link else "…"
        text = text[: max(0, caps.max_chars - len(tail))] + tail
    if out.mentions and mention is not None:
        text += " " + " ".join(mention(m) for m in out.mentions)
    return text
