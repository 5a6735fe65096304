"""The Nagios importer alone: a Nagios 4 shop's configuration -> the expected draft and skipped list."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from opsroom.catalog.loader import load_catalog
from opsroom.catalog.nagios_import import Draft, NagiosImportError, import_nagios
from opsroom.catalog.nagios_syntax import NeedsShellError, expand_macros, split_command, strip_comment
from opsroom.catalog.schema import CommandCheck

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nagios"
P = "/usr/lib/nagios/plugins"


def _shop() -> Draft:
    return import_nagios([(p.name, p.read_text()) for p in sorted(FIXTURES.glob("*.cfg"))])


def _checks(draft: Draft) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in draft.catalog["checks"]}


def _one(text: str, **kw: Any) -> Draft:
    return import_nagios([("objects.cfg", textwrap.dedent(text))], **kw)


COMMON = """
    define command {
        command_name  check_http
        command_line  $USER1$/check_http -I $HOSTADDRESS$ $ARG1$
    }
    define host {
        host_name  web1
        address    127.0.0.1
    }
"""


def test_the_shops_systems_services_and_checks() -> None:
    draft = _shop()
    cat = draft.catalog
    assert cat["environments"] == [{"name": "imported"}]
    assert [(s["name"], s["title"]) for s in cat["systems"]] == [
        ("web-servers", "Web Servers"), ("db-servers", "Database Servers"), ("mail1", "Mail relay")]
    assert {s["name"]: s["system"] for s in cat["services"]} == {
        "http": "web-servers", "web-servers-ssh": "web-servers", "db-servers-ssh": "db-servers",
        "mail1-ssh": "mail1", "web-servers-root-partition": "web-servers",
        "db-servers-root-partition": "db-servers", "mysql-port": "db-servers", "total-processes": "mail1"}
    checks = _checks(draft)
    assert sorted(checks) == sorted([
        "http-web1", "http-web2", "web-servers-ssh-web1", "web-servers-ssh-web2", "db-servers-ssh-db1",
        "mail1-ssh-mail1", "web-servers-root-partition-web1", "web-servers-root-partition-web2",
        "db-servers-root-partition-db1", "mysql-port-db1", "total-processes-mail1"])
    # $HOSTNAME$, $HOSTADDRESS$, a custom host variable and quoted $ARGn$s, split as sh would.
    assert checks["http-web2"] == {
        "name": "http-web2", "type": "command", "service": "http",
        "argv": [f"{P}/check_http", "-H", "web2", "-I", "10.0.0.12", "-p", "8081", "-u", "/health", "-w", "2",
                 "-c", "5"],
        "interval": "600s", "retry_interval": "120s", "max_attempts": 3, "timeout": "30s",
        "description": "Nagios service 'HTTP' on host 'web2' (services.cfg:3)"}
    # An $ARGn$ holding several words splits into several arguments, as it did under Nagios.
    assert checks["mysql-port-db1"]["argv"] == [f"{P}/check_tcp", "-H", "10.0.0.21", "-p", "3306", "-w", "0.5",
                                                "-c", "1"]
    assert checks["mysql-port-db1"]["max_attempts"] == 5  # the service's own value beats the template's
    # local-service (use generic-service) overrides intervals; the service's own check_interval wins over both.
    assert (checks["web-servers-root-partition-web1"]["interval"], checks["total-processes-mail1"]["max_attempts"]) \
        == ("300s", 4)
    assert checks["mail1-ssh-mail1"]["interval"] == "900s"


def test_the_shops_skipped_list_names_each_thing_at_its_line() -> None:
    got = {(s.file, s.line): s for s in _shop().skipped}
    expected = {
        ("commands.cfg", 45): "needs a shell (a pipe `|`)",
        ("contacts.cfg", 1): "contact definitions are not translated",
        ("contacts.cfg", 8): "contactgroup definitions are not translated",
        ("hosts.cfg", 26): "host parents",
        ("nagios.cfg", 3): "not followed",
        ("nagios.cfg", 4): "not followed",
        ("nagios.cfg", 5): "not followed",
        ("services.cfg", 30): "event handlers are not translated",
        ("services.cfg", 38): "unknown macro $USER3$",
        ("services.cfg", 53): "time periods",
        ("services.cfg", 60): "unknown macro $SERVICESTATE$",
        ("services.cfg", 67): "command 'check_dummy_missing' is not defined",
        ("services.cfg", 71): "serviceescalation definitions are not translated",
        ("services.cfg", 80): "servicedependency definitions are not translated",
        ("templates.cfg", 18): "notifications",
        ("templates.cfg", 24): "notifications",
        ("templates.cfg", 31): "time periods",
        ("templates.cfg", 35): "host checks are not translated",
        ("templates.cfg", 36): "notifications",
        ("templates.cfg", 37): "notifications",
        ("templates.cfg", 38): "contact groups",
        ("templates.cfg", 45): "passive checks",
        ("templates.cfg", 49): "notifications",
        ("templates.cfg", 56): "time periods",
        ("templates.cfg", 60): "contact groups",
        ("templates.cfg", 61): "notifications",
        ("templates.cfg", 62): "notifications",
        ("templates.cfg", 63): "notifications",
        ("timeperiods.cfg", 1): "timeperiod definitions are not translated",
        ("timeperiods.cfg", 8): "timeperiod definitions are not translated",
    }
    assert sorted(got) == sorted(expected)
    for where, reason in expected.items():
        assert reason in got[where].reason, (where, got[where].render())
    # A template directive is listed once with the number of objects it reached, not per service.
    assert got[("templates.cfg", 60)].count == 15 and got[("templates.cfg", 38)].count == 4
    # Nothing lost is not listed: retention, perfdata, is_volatile 0, flap detection left on.
    assert not any(s.what.startswith(("retain_", "process_perf_data", "is_volatile", "flap_detection_enabled 1"))
                   for s in got.values())


def test_the_draft_loads_as_a_catalog(tmp_path: Path) -> None:
    draft = _shop()
    (tmp_path / "nagios.yaml").write_text(draft.to_yaml())
    cat = load_catalog(tmp_path)
    assert len(cat.checks) == 11 and cat.checks_of_system("db-servers")
    chk = cat.checks["http-web1"]
    assert isinstance(chk, CommandCheck) and chk.interval == 600 and chk.timeout == 30
    text = draft.to_yaml()
    assert text.startswith("# Catalog draft from a Nagios")
    assert "#   commands.cfg:45: command 'check_dns_answer'" in text


def test_templates_inherit_in_order_with_additive_and_null_values() -> None:
    draft = _one(COMMON + """
        define service {
            name                a
            check_interval      2
            max_check_attempts  7
            register            0
        }
        define service {
            name                b
            check_interval      9
            retry_interval      3
            max_check_attempts  null
            register            0
        }
        define service {
            use                 a,b
            host_name           web1
            service_description Web
            check_command       check_http!-u /x
        }
    """)
    (check,) = draft.catalog["checks"]
    assert check["interval"] == "120s"  # a is named first: it wins over b
    assert check["retry_interval"] == "180s"  # only b sets it
    assert check["max_attempts"] == 7
    assert check["argv"] == [f"{P}/check_http", "-I", "127.0.0.1", "-u", "/x"]


def test_additive_hostgroups_and_host_name_star_with_exclusions() -> None:
    draft = _one(COMMON + """
        define host {
            name        tpl
            hostgroups  base
            register    0
        }
        define host {
            use         tpl
            host_name   web2
            hostgroups  +extra
        }
        define host {
            host_name   web3
        }
        define hostgroup {
            hostgroup_name  extra
        }
        define service {
            host_name           *,!web3
            service_description Web
            check_command       check_http
        }
        define service {
            hostgroup_name      extra
            service_description Extra
            check_command       check_http
        }
    """)
    checks = _checks(draft)
    # web2's first hostgroup (inherited base, then +extra) is its system; web1 is in none: its own.
    assert {s["name"] for s in draft.catalog["systems"]} == {"web1", "base"}
    # "Web" is on hosts of two systems: a service in each, named after its system.
    assert sorted(checks) == ["base-web-web2", "extra-web2", "web1-web-web1"]
    assert checks["base-web-web2"]["argv"] == [f"{P}/check_http", "-I", "web2"]  # no address: the host name


def test_a_host_name_definition_beats_a_hostgroup_one() -> None:
    draft = _one(COMMON + """
        define hostgroup {
            hostgroup_name  all
            members         web1
        }
        define service {
            hostgroup_name      all
            service_description Web
            check_command       check_http!-u /group
        }
        define service {
            host_name           web1
            service_description Web
            check_command       check_http!-u /host
        }
    """)
    (check,) = draft.catalog["checks"]
    assert check["argv"][-1] == "/host"
    assert any("overridden by a more specific definition" in s.reason for s in draft.skipped)


def test_macros_options_interval_length_and_flap_thresholds() -> None:
    draft = _one("""
        define command {
            command_name  c
            command_line  $USER2$/check_x -H $HOSTADDRESS$ -a $HOSTALIAS$ -s "$SERVICEDESC$" -p $USER3$ -m '$$5' '\\;' x
        }
        define host {
            host_name  h1
            alias      The host
            address    10.1.1.1
        }
        define service {
            host_name            h1
            service_description  My check
            check_command        c
            check_interval       2
            low_flap_threshold   20
            high_flap_threshold  40
            active_checks_enabled 0
        }
    """, macros={"USER2": "/opt/plugins"}, secret_macros={"USER3": "DB_PASSWORD"}, interval_length=30)
    (check,) = draft.catalog["checks"]
    assert check["argv"] == ["/opt/plugins/check_x", "-H", "10.1.1.1", "-a", "The", "host", "-s", "My check", "-p",
                             "${secret:DB_PASSWORD}", "-m", "$5", ";", "x"]
    assert (check["interval"], check["retry_interval"]) == ("60s", "30s")
    assert (check["flap_low"], check["flap_high"], check["enabled"]) == (0.2, 0.4, False)


def test_secret_macro_reads_the_servers_environment_and_is_masked(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    draft = _one(COMMON.replace("$ARG1$", "-a $USER5$") + """
        define service {
            host_name            web1
            service_description  Web
            check_command        check_http
        }
    """, secret_macros={"USER5": "NAGIOS_IMPORT_TEST_PASSWORD"})
    monkeypatch.setenv("NAGIOS_IMPORT_TEST_PASSWORD", "s3cret-value")
    (tmp_path / "nagios.yaml").write_text(draft.to_yaml())
    chk = load_catalog(tmp_path).checks["web-web1"]
    assert isinstance(chk, CommandCheck) and chk.argv[-1] == "s3cret-value"
    assert "s3cret-value" not in draft.to_yaml()


@pytest.mark.parametrize(("line", "argv"), [
    ("/p/check -a 'b c' \"d e\" f\\ g", ["/p/check", "-a", "b c", "d e", "f g"]),
    ("/p/check -u '/x?a=1&b=2' -s 'a|b' -r '$(id)'", ["/p/check", "-u", "/x?a=1&b=2", "-s", "a|b", "-r", "$(id)"]),
    ("/p/check \"a \\\"q\\\" \\$x\" x*y -w 10% e=$", ["/p/check", 'a "q" $x', "x*y", "-w", "10%", "e=$"]),
    ("/p/check '' a''b", ["/p/check", "", "ab"]),
])
def test_command_lines_split_as_sh_splits_them(line: str, argv: list[str]) -> None:
    assert split_command(line) == argv


@pytest.mark.parametrize(("line", "why"), [
    ("/p/check | grep x", "pipe"), ("/p/check; id", "`;`"), ("/p/check && id", "`&`"),
    ("/p/check > /tmp/x", ">"), ("/p/check 2>&1", ">"), ("/p/check $(id)", "$(...)"),
    ("/p/check \"$(id)\"", "$(...)"), ("/p/check `id`", "backticks"), ("/p/check \"`id`\"", "backticks"),
    ("/p/check $HOME", "$H"), ("/p/check ${HOME}", "${"), ("/p/check 'open", "quote"),
    ("~/check", "~"), ("/p/check # comment", "#"), ("(/p/check)", "subshell"), ("", "empty"),
])
def test_command_lines_a_shell_would_interpret_are_refused(line: str, why: str) -> None:
    with pytest.raises(NeedsShellError, match=None) as exc:
        split_command(line)
    assert why in str(exc.value)


def test_values_ending_in_a_brace_and_tab_separated_directives() -> None:
    draft = import_nagios([("o.cfg", "define command {\n\tcommand_name\tc\n\tcommand_line\t/p/check -r '^a{2}'\n}\n"
                                     "define host {\n host_name h1\n}\n"
                                     "define service {\n host_name h1\n service_description x {1}\n"
                                     " check_command c\n}\n")])
    (check,) = draft.catalog["checks"]
    assert check["argv"] == ["/p/check", "-r", "^a{2}"] and draft.catalog["services"][0]["title"] == "x {1}"


def test_macro_expansion_and_comments() -> None:
    look = {"A": "1", "B": "$A$"}.__getitem__
    assert expand_macros("x $A$ $B$ $$ $ y $ not-a-macro $", look) == "x 1 $A$ $ $ y $ not-a-macro $"
    assert strip_comment("  check_command  foo!a\\;b ; a comment") == "check_command  foo!a;b"
    assert strip_comment("# all comment") == "" and strip_comment("; all comment") == ""


@pytest.mark.parametrize(("text", "message"), [
    ("define host {\n  host_name a\n", "is never closed"),
    ("define host {\n  host_name a\ndefine service {\n}\n", "a define inside"),
    ("just some text\nmore text\n", "no `define` blocks"),
])
def test_what_is_not_a_nagios_configuration_stops_with_file_and_line(text: str, message: str) -> None:
    with pytest.raises(NagiosImportError) as exc:
        import_nagios([("x.cfg", text)])
    assert message in exc.value.message and exc.value.hint and exc.value.file == "x.cfg"
