"""chat/safe.py per format, and its promises for any text at all (hypothesis)."""
# ruff: noqa: RUF001  (the lookalike characters are the attacks under test)

from __future__ import annotations

import re
import unicodedata
from html.parser import HTMLParser
from typing import get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from opsroom.chat.base import Capabilities, Formatting, Mention, Outgoing
from opsroom.chat.safe import escape, neutralise, render

FORMATS: list[Formatting] = list(get_args(Formatting))
LINK = "https://ops.example.org/rooms/ops"
ZW = "\u200b"


def out(text: str, **kw: object) -> Outgoing:
    return Outgoing(room="ops", channel="#ops", text=text, **kw)  # type: ignore[arg-type]


def caps(fmt: Formatting, max_chars: int = 4000) -> Capabilities:
    return Capabilities(formatting=fmt, max_chars=max_chars)


def units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# --- what a platform would take for a mass mention, markup or control (the test's own model) ---

_MASS_SEEN = re.compile(r"@(?:channel|here|everyone|all|room)(?![^\W_])|<[!@]|<at\b|matrix\.to/|tg://", re.I)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def mass_mention(text: str) -> str | None:
    """A spot a platform that compares NFKC-normalised, case-folded text would notify for."""
    m = _MASS_SEEN.search(unicodedata.normalize("NFKC", text))
    return m.group(0) if m else None


# Text made of the pieces attacks are made of, so hypothesis meets them often, plus any character.
TOKENS = ["@", "＠", "﹫", "channel", "here", "everyone", "all", "room", "Channel", "HERE", ZW, "\u200d", "\ufe0f",
          "<", ">", "!", "<!", "<@", "U123", "at>", "</at>", "&", "&amp;", ";", "[", "]", "(", ")", "![", "](",
          "http://evil.example/", "matrix.to/#/", "tg://user?id=1", "#", "# ", "-", "+", "=", "1.", "*", "_", "~",
          "`", "\\", "|", "\n", "\t", "\r", " ", "   ", "\x1b", "\x1b[", "31m", "\x1b]8;;", "\x07", "\x1b\\",
          "\x9b", "\x9d", "\x9c", "\x90", "\x03", "04,12", "\x02", "\x0f", "\u202e", "\u2066", "\u2028", "\ud83d",
          "\ude00", "😀", "👨\u200d👩", "é", "e\u0301", "\u00ad", "ａｌｌ", "сhannel", "&quot;"]
texts = st.lists(st.one_of(st.sampled_from(TOKENS), st.characters()), max_size=60).map("".join)
ANY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- neutralise ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "shown"), [
    ("\x1b[31mred\x1b[0m plain", "red plain"),
    ("\x1b[2J\x1b[Hcleared", "cleared"),
    ("\x9b31mc1 csi", "c1 csi"),
    ("\x1b]0;pwned title\x07after", "after"),
    ("\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\", "click"),
    ("\x1b]8;;https://evil.example/\x07click\x1b]8;;\x07", "click"),
    ("\x9d8;;https://evil.example/\x9cclick\x9d8;;\x9c", "click"),
    ("\x1bP+q544e\x1b\\dcs gone", "dcs gone"),
    ("\x1b_apc\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\ok", "ok"),
    ("\x1b]2;unterminated title\nnext line", "\nnext line"),
    ("lone\x1b", "lone"),
    ("\x1b(Bcharset \x1b7saved\x1b8", "charset saved"),
    ("bell\x07 nul\x00 bs\x08 del\x7f c1\x85\x9f", "bell nul bs del c1"),
    ("\x02bold\x02 \x0304,12colour\x03 \x1ditalic\x1d \x1funder\x1f \x16rev\x16 \x1estrike\x1e \x11mono\x11\x0f",
     "bold colour italic under rev strike mono"),
    ("\x04ff0000hex colour", "hex colour"),
    ("tab\tand\nnewline", "tab\tand\nnewline"),
    ("10%\r20%\r\n", "10%\n20%\n"),
    ("evil\u202egnp.exe", "evilgnp.exe"),
    ("\u2066isolated\u2069 \u202aembedded\u202c", "isolated embedded"),
    ("line\u2028sep", "line\nsep"),
    ("lone \ud800 surrogate", "lone \ufffd surrogate"),
    ("soft\u00adhyphen word\u2060joiner \ufeffbom", "softhyphen wordjoiner bom"),
    ("family 👨\u200d👩\u200d👧 and ❤\ufe0f", "family 👨\u200d👩\u200d👧 and ❤\ufe0f"),
    ("plain text stays", "plain text stays"),
])
def test_neutralise_removes_controls_and_keeps_the_text(text: str, shown: str) -> None:
    assert neutralise(text) == shown


@pytest.mark.parametrize("text", [
    "@channel", "@here", "@everyone", "@all", "@room", "@Channel", "@HERE", "@eVeRyOnE", "＠channel", "﹫here",
    "@ｃｈａｎｎｅｌ", "@\u200bchannel", "@\u200dhere", "@\ufe0fall", "@сhannel", "@ЕVERYONE", "@αll", "@ch\u00adannel",
    "@chan\x1b[0mnel", "@\x00here", "@\u202eroom", "@**all**", "@_here_", "@here.", "@all,", "@room:example.org",
    "hi @channel!", "(@here)", "ops@here", "@stream", "@topic",
])
def test_every_spelling_of_a_mass_mention_is_defused(text: str) -> None:
    got = neutralise(text)
    assert mass_mention(got) is None, got
    at = next(i for i, c in enumerate(got) if c in "@＠﹫")
    assert got[at + 1] == ZW  # broken right after the at-sign, so the name still reads the same


@pytest.mark.parametrize("text", ["@alice", "@allison", "@roomba", "@channel2", "email@example.org", "@here_is"])
def test_a_person_or_an_address_is_not_a_mass_mention(text: str) -> None:
    assert neutralise(text) == text or text == "@here_is"  # `_` ends a word on Mattermost: @here_ is @here


@pytest.mark.parametrize("text", ["<!here>", "<!channel>", "<!everyone>", "<!subteam^S0123|@oncall>", "<@U0123ABC>",
                                  "<at>Boss</at>", "<AT>x</AT>", "＜!here＞", "<！here>", "https://matrix.to/#/@boss:example.org",
                                  "MATRIX.TO/#/!room:x", "tg://user?id=42"])
def test_platform_mention_syntax_is_broken(text: str) -> None:
    got = neutralise(text)
    assert mass_mention(got) is None, got
    assert got.replace(ZW, "") == text  # only zero-width spaces added


@given(texts)
@ANY
def test_neutralise_leaves_no_control_no_bidi_no_mass_mention_and_is_idempotent(text: str) -> None:
    got = neutralise(text)
    assert not _CONTROL.search(got), ascii(got)
    assert mass_mention(got) is None, ascii(got)
    assert neutralise(got) == got
    got.encode("utf-8")  # sendable: no lone surrogates


# --- escape ----------------------------------------------------------------------------------

def test_html_escapes_its_four_characters() -> None:
    assert escape('<b>"x" & \'y\'</b>', "html") == "&lt;b&gt;&quot;x&quot; &amp; 'y'&lt;/b&gt;"


def test_mrkdwn_escapes_only_what_slack_can_escape() -> None:
    assert escape("<http://evil|ok> & *bold* _it_ ~s~ `c`", "mrkdwn") == \
        "&lt;http://evil|ok&gt; &amp; *bold* _it_ ~s~ `c`"


def test_markdown_escapes_links_html_autolinks_emphasis_and_line_starts() -> None:
    text = ("[x](http://e) ![i](http://e/i.png) <http://e> <b>b</b> *e* _u_ ~~s~~ `c` a\\b &amp;"
            "\n# h\n  - li\n+ p\n3. o\n4) p\n===")
    assert escape(text, "markdown") == (
        "\\[x\\](http://e) !\\[i\\](http://e/i.png) \\<http://e\\> \\<b\\>b\\</b\\> \\*e\\* \\_u\\_ \\~\\~s\\~\\~ "
        "\\`c\\` a\\\\b \\&amp;\n\\# h\n  \\- li\n\\+ p\n3\\. o\n4\\) p\n\\===")


def test_plain_and_irc_change_nothing() -> None:
    for fmt in ("plain", "irc"):
        assert escape("<b>*x*</b> & [a](b)", fmt) == "<b>*x*</b> & [a](b)"  # type: ignore[arg-type]


_MD_MARKUP = {"link_open", "image", "html_inline", "html_block", "heading_open", "em_open", "strong_open",
              "code_inline", "fence", "s_open", "bullet_list_open", "ordered_list_open", "blockquote_open", "hr",
              "table_open"}


def _md_markup(text: str) -> set[str]:
    md = MarkdownIt("commonmark").enable("strikethrough").enable("table")
    found: set[str] = set()
    for token in md.parse(text):
        found.add(token.type)
        for child in token.children or []:
            found.add(child.type)
    return found & _MD_MARKUP


@given(texts)
@ANY
def test_escaped_markdown_parses_to_no_markup(text: str) -> None:
    assert _md_markup(escape(neutralise(text), "markdown")) == set()


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        self.tags.append(("/" + tag, []))

    def handle_entityref(self, name: str) -> None:
        self.refs.append(name)

    def handle_charref(self, name: str) -> None:
        self.refs.append("#" + name)


def _html(text: str) -> _Tags:
    parser = _Tags()
    parser.feed(text)
    parser.close()
    return parser


# --- render ----------------------------------------------------------------------------------

@given(texts, st.integers(min_value=1, max_value=300), st.sampled_from([None, LINK]))
@ANY
def test_html_render_has_only_the_tags_opsroom_adds(text: str, max_chars: int, link: str | None) -> None:
    got = render(out(text, link=link), caps("html", max_chars))
    parsed = _html(got)
    assert set(parsed.refs) <= {"amp", "lt", "gt", "quot"}
    assert all(tag in ("a", "/a") for tag, _ in parsed.tags), parsed.tags
    assert all(attrs == [("href", LINK)] for tag, attrs in parsed.tags if tag == "a")
    assert len(parsed.tags) in (0, 2)
    assert re.fullmatch(r"(?:[^&]|&(?:amp|lt|gt|quot);)*", got), ascii(got)  # no entity cut in half


@given(texts, st.integers(min_value=1, max_value=300), st.sampled_from([None, LINK]))
@ANY
def test_mrkdwn_render_has_no_angle_bracket_but_the_link(text: str, max_chars: int, link: str | None) -> None:
    got = render(out(text, link=link), caps("mrkdwn", max_chars))
    assert got.count("<") == got.count(">") == (1 if got.endswith(f"<{LINK}|the whole text>)") else 0)
    assert re.fullmatch(r"(?:[^&]|&(?:amp|lt|gt);)*", got), ascii(got)


@given(texts, st.integers(min_value=1, max_value=300), st.sampled_from([None, LINK]))
@ANY
def test_markdown_render_has_no_markup_but_the_link(text: str, max_chars: int, link: str | None) -> None:
    got = render(out(text, link=link), caps("markdown", max_chars))
    body = got.removesuffix(f"[the whole text]({LINK}))")
    assert _md_markup(body) == set(), ascii(got)


@given(texts, st.sampled_from(FORMATS), st.integers(min_value=1, max_value=300), st.sampled_from([None, LINK]),
       st.sampled_from(["person", "bot", "output"]))
@ANY
def test_no_format_lets_a_control_or_mass_mention_through_and_every_cut_fits(
        text: str, fmt: Formatting, max_chars: int, link: str | None, kind: str) -> None:
    author = text[:20] if kind == "person" else None
    got = render(out(text, link=link, kind=kind, author=author, via="irc" if author else None), caps(fmt, max_chars))
    assert not _CONTROL.search(got), ascii(got)
    assert mass_mention(got) is None, ascii(got)
    assert units(got) <= max_chars, (units(got), max_chars)
    got.encode("utf-8")


@pytest.mark.parametrize("fmt", FORMATS)
def test_short_text_is_not_cut_and_long_text_ends_with_the_link(fmt: Formatting) -> None:
    assert render(out("x" * 100, link=LINK), caps(fmt, 100)) == "x" * 100
    got = render(out("x" * 101, link=LINK), caps(fmt, 100))
    assert len(got) <= 100 and got.startswith("x") and LINK in got.splitlines()[-1]
    assert got.splitlines()[-1].startswith("… (cut")


def test_a_cut_prefers_a_line_end_and_never_splits_an_entity_or_escape() -> None:
    lines = "\n".join(f"line {i} of output" for i in range(40))
    got = render(out(lines, link=LINK), caps("plain", 300))
    assert got.split("\n")[-2].endswith("of output")  # whole lines kept
    for fmt, unit in (("html", "&quot;"), ("mrkdwn", "&amp;"), ("markdown", "\\*")):
        for max_chars in range(60, 75):
            got = render(out('"&*' * 100 if fmt == "html" else "&*" * 100, link=None), caps(fmt, max_chars))  # type: ignore[arg-type]
            body = got.removesuffix("\n… (cut)")
            assert body.replace(unit, "").count(unit[0]) <= body.count(unit[0]), got
            if fmt == "markdown":
                assert re.fullmatch(r"(?:\\[&*])*", body), body
            else:
                assert re.fullmatch(r"(?:&(?:amp|quot);|\*)*", body), body


def test_a_cut_counts_utf16_units_and_keeps_astral_characters_whole() -> None:
    for max_chars in range(20, 40):
        got = render(out("😀" * 50), caps("plain", max_chars))
        assert units(got) <= max_chars and got.removesuffix("\n… (cut)").strip("😀") == ""
        got.encode("utf-8")
    got = render(out("family 👨\u200d👩\u200d👧" * 5), caps("plain", 20))
    assert not got.removesuffix("\n… (cut)").endswith("\u200d")


def test_a_platform_too_small_for_the_link_line_still_gets_a_cut_mark() -> None:
    assert render(out("x" * 50, link=LINK), caps("plain", 5)) == "xxxx…"
    assert render(out("x" * 50, link=LINK), caps("html", 1)) == "…"


def test_an_odd_link_is_not_drawn_as_a_link() -> None:
    for bad in ['javascript:alert(1)', 'https://x/"><script>', "https://x/ y", "https://x/|evil>"]:
        for fmt in FORMATS:
            got = render(out("x" * 500, link=bad), caps(fmt, 100))
            assert got.endswith("\n… (cut)") and bad not in got


def test_mentions_are_the_adapters_own_markup_added_after_escaping_and_counted() -> None:
    def mention(m: Mention) -> str:
        return f"<@{m.account_id}>"

    who = (Mention("U1", "@channel"), Mention("U2", "boss"))
    got = render(out("approve? <@U9>", mentions=who), caps("mrkdwn"), mention=mention)
    assert got == "approve? &lt;\u200b@U9&gt; <@U1> <@U2>"
    got = render(out("y" * 500, mentions=who, link=LINK), caps("mrkdwn", 100), mention=mention)
    assert got.endswith(" <@U1> <@U2>") and len(got) <= 100
    assert render(out("approve?", mentions=who), caps("plain")) == "approve?"  # no callback: no mention


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_relayed_line_names_its_author_and_platform_who_cannot_mention_or_spoof(fmt: Formatting) -> None:
    got = render(out("hello", kind="person", author="alice", via="slack"), caps(fmt))
    assert got == "alice (slack): hello"
    got = render(out("hi", kind="person", author="<!here> @channel\nopsroom: approved", via="irc"), caps(fmt))
    assert mass_mention(got) is None and "\n" not in got
    assert render(out("x", kind="person", author="", via=None), caps(fmt)) == "someone: x"
    long = render(out("x", kind="person", author="n" * 500, via="irc"), caps(fmt))
    assert len(long) < 100


def test_every_irc_line_of_a_relayed_message_says_who_said_it() -> None:
    got = render(out("one\nopsroom: approved #3", kind="person", author="mallory", via="slack"), caps("irc"))
    assert got.split("\n") == ["mallory (slack): one", "mallory (slack): opsroom: approved #3"]
