"""The catalog loader against real YAML files: every problem at its file:line:column, with a hint."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest

from opsroom.catalog.catalog import Location
from opsroom.catalog.durations import HINT as DURATION_HINT
from opsroom.catalog.errors import CatalogError
from opsroom.catalog.loader import load_catalog

VALID = Path(__file__).parent.parent / "fixtures" / "catalogs" / "valid"

BASE = """\
environments:
  - name: prod
systems:
  - name: system-a
    environment: prod
services:
  - name: service-b
    system: system-a
"""


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(root: Path) -> str:
    with pytest.raises(CatalogError) as info:
        load_catalog(root)
    return info.value.render()


def block(rendered: str, head: str) -> str:
    """The problem block whose first line starts with `head`, with its hint line."""
    lines = rendered.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(head):
            assert lines[i + 1].startswith("    hint: "), rendered
            return f"{line}\n{lines[i + 1]}"
    raise AssertionError(f"no problem at {head!r} in:\n{rendered}")


def test_yaml_syntax_error_points_at_the_line_to_fix(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    services = write(tmp_path, "more.yaml", """\
        services:
          - name: service-c
            system:system-a
            title: C
        """)
    out = problems(tmp_path)
    found = block(out, f"{services}:3:5: error: invalid YAML:")
    assert "hint: check indentation and that every `key: value` has a space after the colon" in found
    assert out.count("error:") == 1  # references into a broken file are not judged


def test_unknown_check_type(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    checks = write(tmp_path, "checks.yaml", """\
        checks:
          - name: web
            service: service-b
            type: htp
            url: http://localhost/
        """)
    found = block(problems(tmp_path), f"{checks}:4:11: error: check 'web': unknown check type 'htp'")
    assert "did you mean 'http'?" in found
    assert "http, tcp, process, command" in found


def test_missing_runbook_reference(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    runbooks = write(tmp_path, "runbooks.yaml", """\
        runbooks:
          - name: start-service
            parameters:
              service: {type: service}
            steps:
              - command: [systemctl, start, "{{ params.service }}"]
        """)
    rules = write(tmp_path, "rules.yaml", """\
        rules:
          - name: restart-b
            when:
              service: service-b
            then:
              runbook: strat-service
              params: {service: service-b}
        """)
    found = block(problems(tmp_path), f"{rules}:6:16: error: rule 'restart-b' runs runbook 'strat-service', "
                                      "which is not in the catalog")
    assert "did you mean 'start-service'?" in found
    assert f"runbooks are defined in {runbooks}" in found


def test_bad_interval(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    checks = write(tmp_path, "checks.yaml", """\
        checks:
          - name: b-tcp
            type: tcp
            service: service-b
            host: localhost
            port: 8081
            interval: 2 parsecs
        """)
    found = block(problems(tmp_path), f"{checks}:7:15: error: check 'b-tcp': interval: '2 parsecs' is not a")
    assert f"hint: {DURATION_HINT}" in found


def test_duplicate_name_across_two_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", BASE)
    second = write(tmp_path, "b/more.yaml", """\
        services:
          - name: service-c
            system: system-a
          - name: service-b
            system: system-a
        """)
    found = block(problems(tmp_path), f"{second}:4:11: error: duplicate service 'service-b'")
    assert f"the first service 'service-b' is at {first}:7:11" in found


def test_unknown_field_with_did_you_mean(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    checks = write(tmp_path, "checks.yaml", """\
        checks:
          - name: b-http
            type: http
            service: service-b
            url: http://localhost:8081/health
            intervall: 30s
        """)
    found = block(problems(tmp_path), f"{checks}:6:5: error: check 'b-http': unknown field 'intervall'")
    assert "hint: did you mean 'interval'?" in found


def test_missing_required_field_points_at_the_object(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    checks = write(tmp_path, "checks.yaml", """\
        checks:
          - name: b-ok
            type: tcp
            service: service-b
            host: localhost
            port: 1
          - name: b-http
            type: http
            service: service-b
        """)
    found = block(problems(tmp_path), f"{checks}:7:5: error: check 'b-http': missing required field 'url'")
    assert "hint: add `url: …` to this check" in found


def test_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSROOM_TEST_HOST", "10.0.0.5")
    monkeypatch.delenv("OPSROOM_TEST_PORT", raising=False)
    monkeypatch.delenv("OPSROOM_TEST_UNSET", raising=False)
    good = tmp_path / "good"
    write(good, "base.yaml", BASE)
    write(good, "checks.yaml", """\
        checks:
          - name: b-http
            type: http
            service: service-b
            url: http://${OPSROOM_TEST_HOST}:${OPSROOM_TEST_PORT:-8081}/health
            description: costs $${HOME} dollars
        """)
    check = load_catalog(good).checks["b-http"]
    assert check.url == "http://10.0.0.5:8081/health"
    assert check.description == "costs ${HOME} dollars"

    bad = tmp_path / "bad"
    write(bad, "base.yaml", BASE)
    checks = write(bad, "checks.yaml", """\
        checks:
          - name: b-http
            type: http
            service: service-b
            url: ${OPSROOM_TEST_UNSET}/health
        """)
    out = problems(bad)
    found = block(out, f"{checks}:5:10: error: environment variable OPSROOM_TEST_UNSET is not set")
    assert "${OPSROOM_TEST_UNSET:-value}" in found
    assert out.count("error:") == 1  # the url validator does not complain about the unexpanded text


def test_valid_multi_file_catalog(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    shutil.copytree(VALID, root)
    catalog = load_catalog(root)

    assert catalog.root == str(root)
    assert set(catalog.environments) == {"prod", "test"}
    assert set(catalog.services) == {"service-b", "service-c"}
    assert catalog.checks["service-b-http"].interval == 30.0
    assert catalog.check_environment("service-c-tcp") == "prod"
    assert catalog.rules["restart-service-b"].then.params == {"service": "service-b"}
    assert [a.pattern for a in catalog.aliases] == ["start {service}"]
    assert catalog.users["alice"].roles == ["sre", "approver"]

    checks = str(root / "system-a" / "checks.yml")
    automation = str(root / "automation.yaml")
    assert catalog.locations[("check", "service-b-http")] == Location(checks, 2, 5)
    assert catalog.locations[("check", "service-b-http", "interval")] == Location(checks, 6, 15)
    assert catalog.locations[("rule", "restart-service-b", "then", "runbook")] == Location(automation, 7, 16)
    rule = ("rule", "restart-service-b")
    assert catalog.locations[(*rule, "policy", "cooldown")] == Location(automation, 12, 17)
    assert catalog.locations[("runbook", "start-service", "steps", "1", "check")] == Location(
        str(root / "runbooks.yaml"), 10, 16)
    assert catalog.locations[("alias", "start {service}")] == Location(automation, 19, 5)
    assert catalog.locate("service", "service-c", "no-such-field") == Location(
        str(root / "system-a" / "services.yaml"), 10, 5)

    assert load_catalog(root).content_hash == catalog.content_hash
    path = root / "system-a" / "checks.yml"
    path.write_text(path.read_text().replace("interval: 30s", "interval: 45s"))
    changed = load_catalog(root)
    assert changed.content_hash != catalog.content_hash
    assert changed.checks["service-b-http"].content_hash != catalog.checks["service-b-http"].content_hash
    assert changed.checks["service-c-tcp"].content_hash == catalog.checks["service-c-tcp"].content_hash


def test_dependency_cycle(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    services = write(tmp_path, "services.yaml", """\
        services:
          - name: api
            system: system-a
            depends_on: [db]
          - name: db
            system: system-a
            depends_on: [service-b, cache]
          - name: cache
            system: system-a
            depends_on:
              - api
        """)
    found = block(problems(tmp_path), f"{services}:4:18: error: services depend on each other in a cycle: "
                                      "api -> db -> cache -> api")
    assert "hint: remove one of these depends_on entries" in found


def test_every_problem_across_files_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    write(tmp_path, "empty.yaml", "")
    write(tmp_path, "people.yaml", """\
        users:
          - name: bob
            roles: [operater]
        roles:
          - name: sre
            inherits: [nobody]
        """)
    rooms = write(tmp_path, "rooms.yaml", """\
        rooms:
          - name: ops
            systems: [system-b]
        """)
    out = problems(tmp_path)
    people = tmp_path / "people.yaml"
    assert "did you mean 'operator'?" in block(out, f"{people}:3:13: error: user 'bob' has role 'operater'")
    assert "built-in roles" in block(out, f"{people}:6:16: error: role 'sre' inherits role 'nobody'")
    found = block(out, f"{rooms}:3:15: error: room 'ops' follows system 'system-b'")
    assert "did you mean 'system-a'?" in found
    assert out.count("error:") == 3


def test_file_shape_problems(tmp_path: Path) -> None:
    listed = write(tmp_path, "a.yaml", "- name: prod\n")
    typo = write(tmp_path, "b.yaml", "environments:\n  - name: prod\nservies: []\n")
    out = problems(tmp_path)
    assert "hint: start with a kind" in block(out, f"{listed}:1:1: error: a catalog file must be a mapping")
    assert "did you mean 'services'?" in block(out, f"{typo}:3:1: error: unknown top-level key 'servies'")


def test_unknown_role_permission_is_named_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "cat"
    path.mkdir()
    (path / "roles.yaml").write_text("roles:\n  - name: oncall\n    permissions: [status.read, runbok.run]\n")
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    text = err.value.render()
    assert re.search(r"roles\.yaml:3:\d+: error: role 'oncall' has unknown permission 'runbok.run'", text), text
    assert "did you mean 'runbook.run'?" in text


# --- a runbook's environment is said, never taken from file order (issue 9, finding 0) --------

TWO_ENVS = """\
environments:
  - name: staging
  - name: prod
    protected: true
systems:
  - name: system-a
    environment: prod
services:
  - name: service-b
    system: system-a
"""


def test_a_runbook_with_no_environment_is_refused_when_there_are_several(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", TWO_ENVS)
    runbooks = write(tmp_path, "runbooks.yaml", """\
        runbooks:
          - name: flush-cache
            steps:
              - command: [redis-cli, flushall]
          - name: start-service
            parameters:
              service: {type: service}
            steps:
              - command: [systemctl, start, "{{ params.service }}"]
          - name: rotate-logs
            environment: prod
            steps:
              - command: [logrotate, -f, /etc/logrotate.conf]
        """)
    out = problems(tmp_path)
    found = block(out, f"{runbooks}:2:5: error: runbook 'flush-cache' does not say which environment it acts on")
    assert "hint: set `environment: <name>` (one of: staging, prod) or give it a parameter of type service" in found
    assert out.count("error:") == 1  # a service parameter or an environment says it


def test_a_runbook_in_a_catalog_of_one_environment_needs_no_environment(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    write(tmp_path, "runbooks.yaml", """\
        runbooks:
          - name: flush-cache
            steps:
              - command: [redis-cli, flushall]
        """)
    assert load_catalog(tmp_path).runbooks["flush-cache"].environment is None


# --- templates and conditions compiled at load, their names checked (finding 26) -------------

RUNBOOK = """\
runbooks:
  - name: start-service
    parameters:
      service: {type: service}
    steps:
      - command: [systemctl, start, "{{ params.service }}"]
"""


def _rule(tmp_path: Path, when: str, then: str = "params: {service: service-b}") -> Path:
    write(tmp_path, "base.yaml", BASE)
    write(tmp_path, "runbooks.yaml", RUNBOOK)
    return write(tmp_path, "rules.yaml", f"""\
rules:
  - name: restart-b
    when:
      service: service-b
      {when}
    then:
      runbook: start-service
      {then}
""")


def test_a_rule_condition_with_a_syntax_error(tmp_path: Path) -> None:
    rules = _rule(tmp_path, "condition: \"state == 'CRITICAL' and\"")
    found = block(problems(tmp_path), f"{rules}:5:19: error: rule 'restart-b': when.condition: condition "
                                      "\"state == 'CRITICAL' and\" does not compile: unexpected 'end of template'")
    assert "a condition is one Jinja2 expression" in found


def test_a_rule_condition_naming_an_undefined_variable(tmp_path: Path) -> None:
    rules = _rule(tmp_path, "condition: attempt >= 2 and stat == 'CRITICAL'")
    out = problems(tmp_path)
    found = block(out, f"{rules}:5:35: error: rule 'restart-b': when.condition uses 'stat', which a rule cannot see")
    assert "did you mean 'state'?" in found and "a rule can use: check, service, system, state," in found
    assert out.count("error:") == 1


def test_a_parameter_that_does_not_exist(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    runbooks = write(tmp_path, "runbooks.yaml", """\
        runbooks:
          - name: start-service
            parameters:
              service: {type: service}
            summary: start {{ params['servise'] }}
            steps:
              - command: [systemctl, start, "{{ params.servce }}"]
              - http:
                  url: http://localhost/{{ params.service }}?run={{ execution.idd }}
        """)
    out = problems(tmp_path)
    found = block(out, f"{runbooks}:7:41: error: runbook 'start-service': steps[0].command[2] uses "
                       "params.servce, which runbook 'start-service' does not have")
    assert "hint: did you mean 'service'? runbook 'start-service' takes: service" in found
    assert "did you mean 'service'?" in block(out, f"{runbooks}:5:23: error: runbook 'start-service': summary "
                                                   "uses params.servise")
    assert "'execution' has: id" in block(out, f"{runbooks}:9:61: error: runbook 'start-service': "
                                               "steps[1].http.url uses execution.idd")
    assert out.count("error:") == 3


def test_template_names_are_those_of_the_context_it_is_rendered_with(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    runbooks = write(tmp_path, "runbooks.yaml", """\
        runbooks:
          - name: start-service
            parameters:
              service: {type: service}
            summary: "start {{ params.service }} as #{{ execution.id }}"
            success_message: "{{ params.service }} started by #{{ execution.id }} in {{ environment }}"
            steps:
              - command: ["{{ python }}", -c, "print(1)", "{{ data_dir }}/{{ runbook }}"]
                env: {WHO: "{{ user }}"}
        """)
    rules = write(tmp_path, "rules.yaml", """\
        rules:
          - name: restart-b
            when: {service: service-b}
            then:
              runbook: start-service
              params: {service: "{{ params.service }}"}
        """)
    out = problems(tmp_path)
    # A summary is made before the run has an execution: it sees params only.
    assert "a runbook's summary can use: params" in block(
        out, f"{runbooks}:5:49: error: runbook 'start-service': summary uses 'execution'")
    assert "a runbook's steps and messages can use: params, execution, runbook, python, environment, data_dir" \
        in block(out, f"{runbooks}:9:24: error: runbook 'start-service': steps[0].env.WHO uses 'user'")
    assert "a rule can use: check, service" in block(
        out, f"{rules}:6:29: error: rule 'restart-b': then.params.service uses 'params', which a rule cannot see")
    assert out.count("error:") == 3


def test_template_syntax_unknown_filters_and_private_attributes(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    runbooks = write(tmp_path, "runbooks.yaml", """\
        runbooks:
          - name: start-service
            parameters:
              service: {type: service}
            failure_message: |
              could not start {{ params.service }}
              {% if params.service %}see the log{% endfi %}
            steps:
              - command: [systemctl, start, "{{ params.service | uppr }}"]
              - command: [echo, "{{ params.service.__class__ }}"]
        """)
    out = problems(tmp_path)
    assert "write {{ expression }} for a value" in block(
        out, f"{runbooks}:7:7: error: runbook 'start-service': failure_message: template")
    assert "did you mean 'upper'?" in block(
        out, f"{runbooks}:9:38: error: runbook 'start-service': steps[0].command[2]: template "
             "'{{ params.service | uppr }}' does not compile: No filter named 'uppr'.")
    assert "remove it" in block(out, f"{runbooks}:10:44: error: runbook 'start-service': steps[1].command[1] reads "
                                     "'__class__', a private attribute the sandbox refuses")
    assert out.count("error:") == 3


def test_alias_params_use_only_the_placeholders_of_their_pattern(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    write(tmp_path, "runbooks.yaml", RUNBOOK)
    aliases = write(tmp_path, "aliases.yaml", """\
        aliases:
          - pattern: "bounce {svc}"
            runbook: start-service
            params: {service: "{srv}"}
        """)
    out = problems(tmp_path)
    found = block(out, f"{aliases}:4:24: error: alias 'bounce {{svc}}': params.service uses {{srv}}")
    assert "did you mean 'svc'?" in found
    assert "which runbook 'start-service' does not take" in out  # {svc} itself, as before


def test_the_rule_names_checked_at_load_are_those_a_rule_is_evaluated_with() -> None:
    from opsroom.automation.rules import _context
    from opsroom.catalog.templates import RULE_NAMES
    from opsroom.events import CheckStateChanged

    ev = CheckStateChanged(check="c", service="s", system="y", environment="prod", old_state="OK",
                           new_state="CRITICAL", state_type="hard", attempt=3, max_attempts=3, output="", since=0.0)
    assert sorted(_context(ev)) == sorted(RULE_NAMES)


def test_a_duplicate_key_is_refused_where_it_is_written_and_a_merged_key_may_be_overridden(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    checks = write(tmp_path, "checks.yaml", """\
        checks:
          - name: b-tcp
            <<: &tcp {type: tcp, host: localhost, port: 80, interval: 30s}
            service: service-b
            interval: 10s
          - name: b-tcp-2
            <<: *tcp
            service: service-b
            port: 81
            port: 82
        """)
    out = problems(checks.parent)
    assert block(out, f"{checks}:10:5: error: duplicate key 'port'").endswith(
        "hint: 'port' is already set at line 9; YAML would silently keep only the last one, so remove one of them")
    assert out.count("error:") == 1  # `interval` and `port` overriding the merged defaults are fine


def test_the_same_template_text_in_many_objects_is_reported_at_each(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE + "checks:\n  - {name: b, type: tcp, service: service-b, host: h, port: 1}\n")
    write(tmp_path, "runbooks.yaml", "runbooks:\n  - name: rb\n    steps:\n      - command: [\"true\"]\n")
    rules = write(tmp_path, "rules.yaml", "rules:\n" + "".join(
        f"  - name: r{i}\n    when: {{check: b, condition: \"stat == 'CRITICAL'\"}}\n"
        f"    then: {{runbook: rb}}\n" for i in range(3)))
    out = problems(tmp_path)
    for i in range(3):  # worked out once, located three times
        assert f"{rules}:{3 + 3 * i}:34: error: rule 'r{i}': when.condition uses 'stat'" in out, out
    assert out.count("error:") == 3


def test_locations_of_a_loaded_catalog_answer_every_lookup(tmp_path: Path) -> None:
    catalog = load_catalog(VALID)
    checks = str(VALID / "system-a" / "checks.yml")
    key = ("check", "service-b-http", "interval")
    assert key in catalog.locations and catalog.locations.get(key) == catalog.locations[key] == Location(checks, 6, 15)
    assert ("check", "service-b-http") in catalog.locations
    assert ("check", "no-such-check") not in catalog.locations and catalog.locations.get(("check", "nope", "x")) is None
    with pytest.raises(KeyError):
        catalog.locations[("check", "service-b-http", "no-such-field")]


def test_the_garbage_collector_runs_again_after_a_load(tmp_path: Path) -> None:
    import gc

    assert gc.isenabled()
    load_catalog(VALID)
    assert gc.isenabled()
    write(tmp_path, "bad.yaml", "checks: 3\n")
    problems(tmp_path)
    assert gc.isenabled()
    gc.disable()  # a caller that turned it off keeps it off
    try:
        load_catalog(VALID)
        assert not gc.isenabled()
    finally:
        gc.enable()
