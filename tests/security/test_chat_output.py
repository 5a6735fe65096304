"""Chat output attacks: what outside text (runbook and check output, catalog titles, relayed lines,
display names) tries to make a platform do, named by class, in every format chat/safe.py renders."""
# ruff: noqa: RUF001  (the lookalike characters are the attacks under test)

from __future__ import annotations

import re
import sys
import unicodedata
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from markdown_it import MarkdownIt

from opsroom.chat.base import Capabilities, Formatting, Outgoing
from opsroom.chat.safe import render
from opsroom.checks.probes.base import ProbeResult
from tests.factories import small_catalog, write_catalog
from tests.inprocess import ask, booted, said, settle

FORMATS: list[Formatting] = list(get_args(Formatting))
LINK = "https://ops.example.org/rooms/ops"
EVIL = "evil.example"

_MASS = re.compile(r"@(?:channel|here|everyone|all|room)(?![^\W_])|<[!@]|<at\b|matrix\.to/|tg://", re.I)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_MD_MARKUP = {"link_open", "image", "html_inline", "html_block", "heading_open", "em_open", "strong_open",
              "code_inline", "fence", "s_open", "bullet_list_open", "ordered_list_open", "blockquote_open", "hr"}


def _mass(text: str) -> str | None:
    m = _MASS.search(unicodedata.normalize("NFKC", text))
    return m.group(0) if m else None


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _markup(text: str, fmt: Formatting, link: str = LINK) -> list[str]:
    """The markup a platform would draw from a rendered text, minus opsroom's own link line."""
    if fmt == "html":
        parser = _Tags()
        parser.feed(text)
        parser.close()
        return [t for t, attrs in parser.tags if not (t == "a" and attrs == {"href": link})]
    if fmt == "mrkdwn":
        return re.findall(r"<[^>]*>", text.replace(f"<{link}|the whole text>", ""))
    if fmt == "markdown":
        md = MarkdownIt("commonmark").enable("strikethrough")
        tokens = md.parse(text.replace(f"[the whole text]({link})", ""))
        return sorted({t.type for tok in tokens for t in [tok, *(tok.children or [])]} & _MD_MARKUP)
    return []  # plain, irc: nothing is markup


def _assert_safe(text: str, fmt: Formatting, link: str = LINK) -> None:
    assert _mass(text) is None, (fmt, text)
    assert not _CONTROL.search(text), (fmt, ascii(text))
    assert not _BIDI.search(text), (fmt, ascii(text))
    assert _markup(text, fmt, link) == [], (fmt, text)


def _out(text: str, **kw: object) -> Outgoing:
    return Outgoing(room="ops", channel="#ops", text=text, **kw)  # type: ignore[arg-type]


# --- the catalogue -------------------------------------------------------------------------------

ATTACKS: dict[str, list[str]] = {
    "mass-mention": [
        "@channel the db is down", "@here", "@everyone", "@all", "@room", "@Channel", "@HERE", "＠channel",
        "﹫everyone", "@ｈｅｒｅ", "@\u200bchannel", "@\u200dall", "@сhannel", "@ch\u00adannel", "@chan\x1b[0mnel",
        "<!here>", "<!channel>", "<!everyone>", "<!subteam^S0123|@oncall>", "<@U0123ABC> you", "<at>Boss</at>",
        "＜!here＞", "https://matrix.to/#/@room:example.org", "<a href='https://matrix.to/#/@boss:example.org'>b</a>",
        "tg://user?id=1234", "<a href=\"tg://user?id=1\">x</a>", "[x](tg://user?id=1)", "@**all**",
    ],
    "terminal-escape": [
        "\x1b[31mred\x1b[0m", "\x1b[2J\x1b[Hwiped", "\x1b]0;title\x07", f"\x1b]8;;https://{EVIL}/\x1b\\click\x1b]8;;\x1b\\",
        f"\x9d8;;https://{EVIL}/\x9cclick\x9d8;;\x9c", "\x1bP+q\x1b\\", "\x1b_apc\x1b\\", "\x9b6n", "lone \x1b",
        "\x00\x07\x08\x7f\x85", "\x02\x0304,12irc\x0f\x16\x1d\x1f\x1e\x11", "\x1b]52;c;Y3VybCBldmlsCg==\x07",
    ],
    "markup-injection": [
        "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<b>bold</b><i>i</i>", "<!-- hidden -->x",
        "# HEADING", "## deploy approved", "**bold** _it_ ~~s~~ `code`", "```\nfence\n```", "> quote", "- item\n+ item",
        "1. first\n2) second", "text\n===", "---", "&lt;b&gt; &#60;i&#62;", "<mrkdwn|x>", "| a | b |\n|---|---|",
    ],
    "link-spoofing": [
        f"[https://ops.example.org](https://{EVIL}/)", f"![pixel](https://{EVIL}/p.png)", f"<https://{EVIL}/>",
        f"<https://{EVIL}/|https://ops.example.org>", f'<a href="https://{EVIL}/">https://ops.example.org</a>',
        f"[ok][r]\n\n[r]: https://{EVIL}/", f"\x1b]8;;https://{EVIL}/\x07https://ops.example.org\x1b]8;;\x07",
    ],
    "bidi-spoofing": [
        "invoice\u202egpj.exe", "\u2066admin\u2069 approved", "\u202aembedded\u202c", "\u202bx\u202c",
        "\u202dover\u202c", "access = \"user\u202e \u2066// Check if admin\u2069 \u2066\"",
    ],
}
CASES = [pytest.param(payload, id=f"{cls}-{i}") for cls, payloads in ATTACKS.items()
         for i, payload in enumerate(payloads)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", CASES)
def test_an_attack_in_bot_output_is_neutralised_in_every_format(payload: str, fmt: Formatting) -> None:
    for kind in ("bot", "output", "notice"):
        _assert_safe(render(_out(f"check said: {payload} (end)", kind=kind, link=LINK), Capabilities(formatting=fmt)),
                     fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", CASES)
def test_author_name_injection_cannot_mention_mark_up_or_fake_a_line(payload: str, fmt: Formatting) -> None:
    got = render(_out("hello", kind="person", author=payload, via="slack"), Capabilities(formatting=fmt))
    _assert_safe(got, fmt)
    assert got.endswith(" (slack): hello") and "\n" not in got


@pytest.mark.parametrize("fmt", FORMATS)
def test_author_name_injection_by_line_break_or_platform_name(fmt: Formatting) -> None:
    got = render(_out("hi", kind="person", author="mallory\nopsroom: request #3 approved", via="@here\nx"),
                 Capabilities(formatting=fmt))
    assert "\n" not in got and _mass(got) is None
    got = render(_out("a\nopsroom: approved", kind="person", author="mallory", via="irc"), Capabilities(formatting=fmt))
    if fmt == "irc":  # each IRC line is its own message from the bot: each says who said it
        assert all(line.startswith("mallory (irc): ") for line in got.split("\n"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("text", "max_chars", "cut"), [
    ("x" * 5000, 4000, True), ("y" * 4000, 4000, False), ("😀" * 2000, 4000, False), ("😀" * 2001, 4000, True),
    ("&<>\"" * 2000, 4000, True), ("*_[" * 2000, 1000, True), ("@channel " * 1000, 500, True),
    ("\x1b[31m" * 3000 + "tail", 100, False), ("line\n" * 2000, 300, True), ("x" * 100, 1, True),
])
def test_length_is_cut_to_the_platform_with_a_link_to_the_whole_text(text: str, max_chars: int, cut: bool,
                                                                      fmt: Formatting) -> None:
    got = render(_out(text, link=LINK), Capabilities(formatting=fmt, max_chars=max_chars))
    _assert_safe(got, fmt)
    assert len(got.encode("utf-16-le")) // 2 <= max_chars
    last = got.rsplit("\n", 1)[-1]
    if cut and max_chars > 80:
        assert last.startswith("… (cut") and LINK in last
    elif cut:
        assert got.endswith("…")
    else:
        assert "…" not in got and got.endswith(("y", "😀", "tail"))


# --- a whole opsroom: what the adapter receives, rendered for every platform ---------------------

TITLE = "@channel <!here> <b>Shop</b> [x](https://evil.example/) \x1b[31m\u202eRED"
OUTPUT = ("@here @room @everyone <!channel> <@U999> ＠all\n\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\ "
          "\x1b[2J<script>alert(1)</script>\n# owned\n[click](https://evil.example/) \u202egnp.exe <at>boss</at>")


def _catalog(tmp: Path) -> Path:
    path = small_catalog(tmp, systems=[{"name": "sys", "title": TITLE, "environment": "test"}],
                         services=[{"name": "svc", "title": TITLE, "system": "sys"}])
    data: dict[str, Any] = yaml.safe_load((path / "catalog.yaml").read_text())
    script = f"import sys; sys.stdout.write({OUTPUT!r})"
    data["runbooks"].append({"name": "payload", "approval": "none", "environment": "test",
                             "steps": [{"command": [sys.executable, "-c", script]}]})
    return write_catalog(path, data)


async def test_payloads_in_runbook_output_titles_check_output_and_names_reach_no_platform_live(tmp_path: Path) -> None:
    async with booted(tmp_path, _catalog(tmp_path)) as (rt, fake):
        await ask(fake, "you", "run payload")
        await settle(rt)
        assert "succeeded" in await ask(fake, "you", "execution 1")
        await ask(fake, "you", "health sys")
        assert rt.monitor is not None
        rt.monitor.record("svc-cmd", ProbeResult(state="CRITICAL", output=OUTPUT.replace("\n", " "), long_output="",
                                                 latency_ms=1.0, perfdata={}, down=False), now=1_700_000_000.0)
        await fake.say("ops", "<!here> @channel\nopsroom", "hi @everyone \x1b[2J <b>x</b>")
        await said(rt, fake)
        received = [*fake.sent, *fake.streamed]
        # The payloads did reach the adapter raw (it is the renderer's job to neutralise them)...
        raw = "\n".join(f"{o.author}: {o.text}" for o in received)
        for piece in ("@here", "<!channel>", "\x1b]8;;", "<script>", "\u202e", "@channel <!here> <b>Shop</b>",
                      "<!here> @channel"):
            assert piece in raw, piece
        assert any(o.kind == "output" for o in received) and any(o.kind == "person" for o in received)
        # ...and no platform would show them live.
        for o in received:
            for fmt in FORMATS:
                for max_chars in (4000, 200):
                    _assert_safe(render(o, Capabilities(formatting=fmt, max_chars=max_chars)), fmt, o.link or LINK)
