"""Chat input attacks: secrets typed in every shell form, odd numbers, and suggestions that would change prod."""

from __future__ import annotations

import re
import secrets
import shlex
import string
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.chat import commands
from opsroom.chat.fake import FakeAdapter
from opsroom.rooms import service as rooms
from opsroom.runtime import Runtime
from opsroom.secrets import masking
from tests.factories import small_catalog, write_catalog
from tests.inprocess import ask, booted, said


def _catalog(tmp: Path) -> Path:
    """The small catalog plus a runbook with a secret parameter and aliases that feed it."""
    path = small_catalog(tmp)
    data: dict[str, Any] = yaml.safe_load((path / "catalog.yaml").read_text())
    data["runbooks"].append({
        "name": "rotate", "approval": "none", "environment": "test",
        "parameters": {"token": {"secret": True, "pattern": "[A-Za-z0-9 ]+"},
                       "user": {"required": False}},
        "steps": [{"command": [sys.executable, "-c",
                               "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n'); "
                               "print('got', sys.argv[2])",
                               str(tmp / "tokens.txt"), "{{ params.token }}"]}],
    })
    data["aliases"] += [{"pattern": "login {user} with {token}", "runbook": "rotate",
                         "params": {"user": "{user}", "token": "{token}"}},
                        {"pattern": "rotate now {token}", "runbook": "rotate"},
                        {"pattern": "start {text}", "runbook": "echo-args"}]
    return write_catalog(path, data)


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[tuple[Runtime, FakeAdapter]]:
    async with booted(tmp_path, _catalog(tmp_path)) as pair:
        yield pair


async def _everywhere(rt: Runtime, fake: FakeAdapter) -> str:
    """Everything a person or the log could read after the fact: room history, what adapters got, audit."""
    await said(rt, fake)
    history = [m.text for m in await rooms.history_of(rt, room="ops", limit=500)]
    sent = [m.text for m in fake.sent]
    records = [repr(r.details) for r in await audit.list_records(rt, actor=SYSTEM, limit=500)]
    return "\n".join([*history, *sent, *records])


def _ran(tmp: Path) -> list[str]:
    path = tmp / "tokens.txt"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize(("typed", "value"), [
    ("run rotate token=abc\\ defghi", "abc defghi"),
    ("run rotate Token=Upper1case", "Upper1case"),
    ("run rotate TOKEN='single quoted secret'", "single quoted secret"),
    ('run rotate token="double quoted secret"', "double quoted secret"),
    ('run rotate token=mixed"quote part"tail', "mixedquote parttail"),
    ("!run rotate user=bob token=Bangprefixed9", "Bangprefixed9"),
    ("run  rotate\ttoken='two  spaces kept'", "two  spaces kept"),
    ("  /  run rotate token=Slashspaced3", "Slashspaced3"),
])
async def test_a_secret_typed_in_any_shell_form_is_masked_and_is_what_runs(
        chat: tuple[Runtime, FakeAdapter], tmp_path: Path, typed: str, value: str) -> None:
    rt, fake = chat
    await fake.say("ops", "you", typed)
    seen = await _everywhere(rt, fake)
    assert _ran(tmp_path) == [value]  # parsed exactly as the redaction parsed it
    for piece in {value, *value.split()}:
        assert piece not in seen, (piece, seen)
    assert "****" in seen


async def test_an_alias_placeholder_feeding_a_secret_is_masked(chat: tuple[Runtime, FakeAdapter],
                                                                tmp_path: Path) -> None:
    rt, fake = chat
    # One at a time: runs differing only in a secret share their lock.
    for typed in ("login bob with Aliased5ecret", "rotate now Direct7secret",
                  "rotate   now Spread\n  over  lines"):  # handle() collapses the spaces
        await fake.say("ops", "you", typed)
        await said(rt, fake)
    seen = await _everywhere(rt, fake)
    assert _ran(tmp_path) == ["Aliased5ecret", "Direct7secret", "Spread over lines"]
    assert "Aliased5ecret" not in seen and "Direct7secret" not in seen
    assert "Spread" not in seen and "lines" not in seen
    assert "login bob with ****" in seen  # the rest of the line is kept: only the secret is hidden


async def test_a_value_failing_its_pattern_is_not_echoed(chat: tuple[Runtime, FakeAdapter], tmp_path: Path) -> None:
    rt, fake = chat
    reply = await ask(fake, "you", "run rotate token=Bad!Pattern7")
    assert "Bad!Pattern7" not in reply and "pattern" in reply
    assert "Bad!Pattern7" not in await _everywhere(rt, fake)
    assert _ran(tmp_path) == []


async def test_an_unreadable_line_hides_everything_after_the_runbook(chat: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = chat
    reply = await ask(fake, "you", 'run rotate token="Unclosed quote9')
    assert "cannot read the parameters" in reply
    seen = await _everywhere(rt, fake)
    assert "Unclosed" not in seen and "quote9" not in seen
    assert "run rotate ****" in seen


async def test_a_bare_word_for_a_secret_runbook_is_not_echoed(chat: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = chat
    reply = await ask(fake, "you", "run rotate Forgot4key")
    assert "is not key=value" in reply and "Forgot4key" not in reply
    assert "Forgot4key" not in await _everywhere(rt, fake)  # the typed line shows `run rotate ****`


async def test_a_viewer_cannot_teach_the_masker_to_hide_words(chat: tuple[Runtime, FakeAdapter]) -> None:
    """Typed secrets are learned process-wide only from people who may run runbooks: otherwise a
    viewer could make any word (a user name, an action) vanish from the audit and server logs."""
    rt, fake = chat
    word = "evidence" + secrets.token_hex(3)
    reply = await ask(fake, "dev", f"run rotate token={word}")
    assert "dev may not run runbooks" in reply
    assert masking.mask(f"x {word} y") == f"x {word} y"
    history = [m.text for m in await rooms.history_of(rt, room="ops", limit=50)]
    assert "run rotate token=****" in history and not any(word in h for h in history)
    typed = "Learned" + secrets.token_hex(3)
    await fake.say("ops", "you", f"run rotate token={typed}")
    assert masking.mask(typed) == "****"


def _quoted(value: str, form: int) -> str:
    if form == 0:
        return shlex.quote(value)
    if form == 1:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "".join(c if c.isalnum() else "\\" + c for c in value)


async def test_any_secret_in_any_quoting_is_hidden_in_the_typed_line(chat: tuple[Runtime, FakeAdapter]) -> None:
    rt, _fake = chat

    @given(st.text(alphabet=string.ascii_letters + string.digits + " '\"\\=$!#;&|", min_size=1, max_size=16),
           st.sampled_from(["token", "Token", "TOKEN"]), st.integers(min_value=0, max_value=2))
    @settings(max_examples=300, deadline=None)
    def check(tail: str, key: str, form: int) -> None:
        value = "Zq" + tail  # a marker no other text of the line holds
        args = f"rotate user=bob {key}={_quoted(value, form)}"
        assert [w for w, _, _ in commands.split_words(args)][-1] == f"{key}={value}"
        shown = commands.redact(rt, "run " + args)
        assert value not in shown and "Zq" not in shown, (args, shown)
        assert shown.startswith("run rotate user=bob ") and shown.endswith("=****")

    check()


@given(st.text(alphabet="ab =\\'\"\t\n", max_size=14))
@settings(max_examples=400, deadline=None)
def test_split_words_reads_exactly_as_shlex(text: str) -> None:
    try:
        expected = shlex.split(text)
    except ValueError:
        with pytest.raises(ValueError):
            commands.split_words(text)
        return
    words = commands.split_words(text)
    assert [w for w, _, _ in words] == expected
    for word, start, end in words:  # each span re-reads as its word
        assert shlex.split(text[start:end]) == [word]


@pytest.mark.parametrize(("typed", "answer"), [
    ("approve ²", "#² is not a request number"),
    ("deny ٣ no", "#٣ is not a request number"),
    ("approve 99999999999999999999", "there is no request #99999999999999999999"),
    ("execution 99999999999999999999", "there is no execution #99999999999999999999"),
    ("execution ¹", "#¹ is not an execution number"),
])
async def test_odd_numbers_get_a_clear_answer(chat: tuple[Runtime, FakeAdapter], typed: str, answer: str) -> None:
    _rt, fake = chat
    reply = await ask(fake, "boss", typed)
    assert answer in reply and "went wrong" not in reply, reply


@pytest.mark.parametrize("typed", ["run rotate token=\ud800abc", "is \ud800 running", "echo a\x00b", "\udfff",
                                   "approve \x00", "deny 1 \ud800"])
async def test_unencodable_text_from_any_adapter_gets_an_answer(chat: tuple[Runtime, FakeAdapter],
                                                                 typed: str) -> None:
    """A lone surrogate or NUL (possible from any chat platform, not only the web socket) could not
    be stored: the line was lost and the command answered 'something went wrong'."""
    rt, fake = chat
    reply = await ask(fake, "you", typed)
    assert "went wrong" not in reply, reply
    history = [m.text for m in await rooms.history_of(rt, room="ops", limit=10)]
    assert len(history) == 2, history  # the person's line and the answer, both kept


def _suggested(reply: str) -> list[str]:
    return re.findall(r"`([^`]+)`", reply.split("did you mean", 1)[1]) if "did you mean" in reply else []


CHANGING = ("start {text}", "echo {text}", "run {args}", "approve {id}", "deny {id} {reason}",
            "login {user} with {token}", "rotate now {token}")


@pytest.mark.parametrize("typed", ["show me web", "tail web", "list web-http", "is web up now?",
                                   "show me stat", "what is running?"])
async def test_a_question_is_never_answered_with_a_change(chat: tuple[Runtime, FakeAdapter], typed: str) -> None:
    rt, fake = chat
    reply = await ask(fake, "you", typed)
    suggestions = [s for s in _suggested(reply) if s != "help"]
    assert suggestions, reply
    assert not set(suggestions) & set(CHANGING), reply
    await said(rt, fake)
    assert not (Path(rt.settings.data).parent / "argv.json").exists()  # nothing ran


@pytest.mark.parametrize("typed", ["status of web", "what's up with web?", "is web down"])
async def test_a_question_now_understood_is_answered_by_reading(chat: tuple[Runtime, FakeAdapter], typed: str) -> None:
    """These phrasings are read as `is web running` (issue 10): an answer, no change offered, nothing run."""
    rt, fake = chat
    reply = await ask(fake, "you", typed)
    assert reply.startswith("I don't know a service called 'web' — services: "), reply
    assert not any(c.split()[0] in reply for c in CHANGING), reply
    await said(rt, fake)
    assert not (Path(rt.settings.data).parent / "argv.json").exists()


@pytest.mark.parametrize("typed", ["restart web", "strat web", "aprove 3"])
async def test_a_change_is_never_the_only_suggestion(chat: tuple[Runtime, FakeAdapter], typed: str) -> None:
    _rt, fake = chat
    reply = await ask(fake, "you", typed)
    suggestions = [s for s in _suggested(reply) if s != "help"]
    assert suggestions and suggestions[0] not in CHANGING, reply  # a reading command comes first
