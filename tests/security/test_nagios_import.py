"""A hostile Nagios configuration given to `catalog import nagios`: no shell, no file it names, no environment
variable it names, bounded work, nothing that drives the terminal.

Each translated command is also run through opsroom's own command probe, to show that what the draft
holds is literal argv: a smuggled `touch` leaves no file.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import opsroom.cli as cli_module
from opsroom.catalog.loader import load_catalog
from opsroom.catalog.nagios_import import Draft, NagiosImportError, import_nagios
from opsroom.catalog.schema import CommandCheck
from opsroom.checks.probes import ProbeContext, get_probe
from opsroom.cli import app


def _with(command_line: str, arg: str) -> Draft:
    text = f"""
        define command {{
            command_name  c
            command_line  {command_line}
        }}
        define host {{
            host_name  h1
            address    127.0.0.1
        }}
        define service {{
            host_name            h1
            service_description  s
            check_command        c!{arg}
        }}
    """
    return import_nagios([("objects.cfg", textwrap.dedent(text))])


# --- command injection: a shell is never run, a smuggled command never executes ---------------------

PAYLOADS = ["x; touch {m}", "x && touch {m}", "x | touch {m}", "$(touch {m})", "`touch {m}`", "x > {m}",
            "x' ; touch {m} ; '", 'x" ; touch {m} ; "', "x\\\"; touch {m}; \\\"", "${{IFS}}touch${{IFS}}{m}"]
SLOTS = ["/bin/echo $ARG1$", "/bin/echo '$ARG1$'", '/bin/echo "$ARG1$"']


@pytest.mark.parametrize("slot", SLOTS)
@pytest.mark.parametrize("payload", PAYLOADS)
async def test_command_injection_through_an_argument_is_refused_or_stays_literal(
        slot: str, payload: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    arg = payload.format(m=marker)
    draft = _with(slot, arg)
    if not draft.catalog["checks"]:
        (skipped,) = [s for s in draft.skipped if s.what == "service 's' on h1"]
        assert "needs a shell" in skipped.reason and skipped.line == 13  # the check_command line
        return
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "nagios.yaml").write_text(draft.to_yaml())
    check = load_catalog(tmp_path / "cat").checks["s-h1"]
    assert isinstance(check, CommandCheck)
    assert check.argv[0] == "/bin/echo" and len(check.argv) == 2  # one literal argument, whatever it holds
    ctx = ProbeContext()
    try:
        result = await get_probe("command").run(check, ctx)
    finally:
        await ctx.close()
    # echo printed the argument itself (a `|` in it starts perfdata, as any plugin's would).
    assert result.state == "OK" and result.output == check.argv[1].partition("|")[0].strip()
    assert not marker.exists()


@pytest.mark.parametrize("command_line", [
    "/bin/sh -c '$ARG1$'", "/bin/bash -c id", "/usr/bin/env bash -c id", "/usr/bin/sudo -u root /bin/sh -c id",
    "/bin/busybox sh -c id", "/usr/bin/timeout 5 /bin/dash -c id", "su -c id nagios",
])
def test_command_lines_that_start_a_shell_are_listed_not_translated(command_line: str) -> None:
    draft = _with(command_line, "id")
    assert draft.catalog["checks"] == []
    assert any("runs the shell" in s.reason for s in draft.skipped)


# --- environment variable injection: the catalog loader must not read what a Nagios value names ------

def test_an_environment_reference_in_nagios_text_stays_literal(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAGIOS_TEST_LEAK", "the-servers-secret")
    draft = import_nagios([("o.cfg", textwrap.dedent("""
        define command {
            command_name  c
            command_line  /bin/echo '${NAGIOS_TEST_LEAK}' '$$${NAGIOS_TEST_LEAK}'
        }
        define host {
            host_name  h1
        }
        define service {
            host_name            h1
            service_description  leak ${NAGIOS_TEST_LEAK}
            check_command        c
        }
    """))])
    (tmp_path / "nagios.yaml").write_text(draft.to_yaml())
    cat = load_catalog(tmp_path)
    (check,) = cat.checks.values()
    assert isinstance(check, CommandCheck)
    assert check.argv[1:] == ["${NAGIOS_TEST_LEAK}", "$${NAGIOS_TEST_LEAK}"]
    (service,) = cat.services.values()
    assert service.title == "leak ${NAGIOS_TEST_LEAK}"
    assert "the-servers-secret" not in repr(cat.checks) + repr(cat.services)


# --- path traversal: files the configuration names are never read --------------------------------------

def test_include_directives_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = "define command {\n command_name c\n command_line /bin/true\n}\ndefine host {\n host_name evil\n}\n" \
           "define service {\n host_name evil\n service_description evil\n check_command c\n}\n"
    (outside / "evil.cfg").write_text(evil)
    main = tmp_path / "main.cfg"
    main.write_text(f"cfg_file={outside / 'evil.cfg'}\ncfg_dir={outside}\ninclude_file={outside / 'evil.cfg'}\n"
                    f"include_dir={outside}\nresource_file={outside / 'evil.cfg'}\n$USER3$=hunter2\n"
                    "define host {\n host_name h1\n}\n")
    result = CliRunner().invoke(app, ["catalog", "import", "nagios", str(main)])
    assert result.exit_code == 0, result.output
    draft = yaml.safe_load(result.stdout)
    assert draft["checks"] == [] and draft["services"] == [] and "hunter2" not in result.output
    for line in range(1, 6):
        assert f"{main}:{line}: " in result.stderr and "not followed" in result.stderr
    assert f"{main}:6: $USER3$: resource macros are not read from files" in result.stderr


def test_links_out_of_a_directory_given_are_not_followed(tmp_path: Path) -> None:
    outside, given = tmp_path / "outside", tmp_path / "given"
    (outside / "sub").mkdir(parents=True)
    given.mkdir()
    (outside / "evil.cfg").write_text("define host {\n host_name evil-file\n}\n")
    (outside / "sub" / "evil.cfg").write_text("define host {\n host_name evil-dir\n}\n")
    (given / "hosts.cfg").write_text("define host {\n host_name good\n}\n")
    (given / "real.cfg").write_text("define hostgroup {\n hostgroup_name g\n members good\n}\n")
    os.symlink(outside / "evil.cfg", given / "link.cfg")
    os.symlink(outside / "sub", given / "linkdir")
    os.symlink(given / "real.cfg", given / "enabled.cfg")  # a link inside the tree is read
    sources = cli_module._nagios_sources([given])
    assert sorted(Path(name).name for name, _ in sources) == ["enabled.cfg", "hosts.cfg", "real.cfg"]


# --- resource exhaustion: template chains, cycles, fan-out and sizes are bounded ---------------------

def test_recursive_and_huge_use_chains_are_bounded() -> None:
    parts = ["define service {\n name self\n use self\n register 0\n}",
             "define service {\n name a\n use b\n register 0\n}", "define service {\n name b\n use a\n register 0\n}"]
    parts += [f"define service {{\n name t{i}\n use t{i + 1}\n check_interval {i}\n register 0\n}}"
              for i in range(5000)]
    # A diamond 40 layers deep: 2**40 paths if every path were walked, 80 templates resolved once each.
    parts += [f"define service {{\n name d{i}x\n use d{i + 1}x,d{i + 1}y\n register 0\n}}\n"
              f"define service {{\n name d{i}y\n use d{i + 1}y,d{i + 1}x\n register 0\n}}" for i in range(40)]
    parts.append("define command {\n command_name c\n command_line /bin/true\n}\ndefine host {\n host_name h\n}")
    for i, tpl in enumerate(["self", "a", "t0", "d0x"]):
        parts.append(f"define service {{\n use {tpl}\n host_name h\n service_description s{i}\n check_command c\n}}")
    started = time.perf_counter()
    draft = import_nagios([("o.cfg", "\n".join(parts))])
    assert time.perf_counter() - started < 5.0
    assert len(draft.catalog["checks"]) == 4
    reasons = [s.reason for s in draft.skipped]
    assert sum("is a cycle" in r for r in reasons) >= 2
    assert any(f"deeper than {32}" in r for r in reasons)


def test_a_host_star_fan_out_is_bounded() -> None:
    hosts = "".join(f"define host {{\n host_name h{i}\n}}\n" for i in range(300))
    services = "".join(f"define service {{\n host_name *\n service_description s{i}\n check_command c\n}}\n"
                       for i in range(200))
    with pytest.raises(NagiosImportError, match="more than 50000"):
        import_nagios([("o.cfg", "define command {\n command_name c\n command_line /bin/true\n}\n" + hosts + services)])


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_module, "MAX_IMPORT_BYTES", 1000)
    big = tmp_path / "big.cfg"
    big.write_text("# padding\n" * 200)
    result = CliRunner().invoke(app, ["catalog", "import", "nagios", str(big)])
    assert result.exit_code == 2 and "larger than" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("bad", ["\x00", "\ue000"])
def test_nul_and_the_placeholder_character_are_refused(bad: str) -> None:
    with pytest.raises(NagiosImportError, match="NUL or private-use"):
        import_nagios([("o.cfg", f"define host {{\n host_name a{bad}\n}}\n")])


# --- terminal injection: what the configuration says is shown, never obeyed ------------------------

def test_escape_sequences_in_the_configuration_reach_no_terminal_and_no_comment(tmp_path: Path) -> None:
    cfg = tmp_path / "o.cfg"
    cfg.write_text("define host {\n host_name h1\n notes_url x\n weird_directive \x1b]0;pwned\x07\x1b[2Jtext\n}\n"
                   "define contact {\n contact_name \x1b]8;;https://evil.example/\x1b\\x\n}\n")
    out = tmp_path / "draft"
    result = CliRunner().invoke(app, ["catalog", "import", "nagios", str(cfg), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "weird_directive" in result.stdout
    comments = [line for line in (out / "nagios.yaml").read_text().splitlines() if line.startswith("#")]
    assert comments and not any("\x1b" in line or "\x07" in line for line in comments)
    load_catalog(out)  # the draft still loads


def test_bad_options_and_missing_files_are_one_clear_line(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in ((["--macro", "PATH=/tmp", "x.cfg"], "is not USERn=VALUE"),
                          ([str(tmp_path / "missing.cfg")], "not a file"),
                          ([str(tmp_path)], "no `define` blocks")):
        if "no `define`" in message:
            (tmp_path / "empty.cfg").write_text("# nothing here\nfoo bar\n")
        result = runner.invoke(app, ["catalog", "import", "nagios", *args])
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert "Traceback" not in result.output
