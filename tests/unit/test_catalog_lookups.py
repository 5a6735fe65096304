"""The catalog's derived lookups: indexes agree with a plain scan, name matching keeps its order.

The indexes exist because scanning 20,000 checks on every state change blocked the
event loop; these tests pin that the faster answers are the same answers.
"""

from __future__ import annotations

import difflib
import random
import textwrap
from pathlib import Path

import yaml

from opsroom.catalog import reading
from opsroom.catalog.catalog import Catalog, normalize
from opsroom.catalog.loader import load_catalog

CATALOG = """\
environments:
  - name: prod
systems:
  - name: system-a
    title: System A
    environment: prod
  - name: system-b
    environment: prod
services:
  - name: service-b
    system: system-a
    aliases: [backend]
  - name: service-c
    system: system-a
  - name: service-d
    system: system-b
    title: Backend Two
checks:
  - name: b-http
    type: tcp
    service: service-b
    host: 127.0.0.1
    port: 1
  - name: b-off
    type: tcp
    service: service-b
    host: 127.0.0.1
    port: 1
    enabled: false
  - name: c-http
    type: tcp
    service: service-c
    host: 127.0.0.1
    port: 1
  - name: a-wide
    type: tcp
    system: system-a
    host: 127.0.0.1
    port: 1
  - name: d-http
    type: tcp
    service: service-d
    host: 127.0.0.1
    port: 1
"""


def load(tmp_path: Path, text: str = CATALOG) -> Catalog:
    (tmp_path / "c.yaml").write_text(text, encoding="utf-8")
    return load_catalog(tmp_path)


def test_indexes_agree_with_a_scan(tmp_path: Path) -> None:
    cat = load(tmp_path)
    for system in [*cat.systems, "no-such-system"]:
        scan = [n for n, c in cat.checks.items() if c.enabled and cat.check_system(n) == system]
        assert cat.checks_of_system(system) == scan
        assert cat.services_of_system(system) == [n for n, s in cat.services.items() if s.system == system]
    for service in [*cat.services, "no-such-service"]:
        assert cat.checks_of_service(service) == [n for n, c in cat.checks.items()
                                                  if c.service == service and c.enabled]
    assert cat.checks_of_system("system-a") == ["b-http", "c-http", "a-wide"]  # disabled b-off left out


def test_lookups_hand_out_copies(tmp_path: Path) -> None:
    cat = load(tmp_path)
    cat.checks_of_system("system-a").clear()
    assert cat.checks_of_system("system-a") == ["b-http", "c-http", "a-wide"]


def test_forgiving_names_and_first_match_in_catalog_order(tmp_path: Path) -> None:
    cat = load(tmp_path)
    assert cat.find_service("Service B") == ("service-b", [])
    assert cat.find_service("BACKEND") == ("service-b", [])  # an alias
    # "Backend Two" is service-d's title; it normalizes to nothing service-b claims.
    assert cat.find_service("backend two") == ("service-d", [])
    assert cat.find_system("system a") == ("system-a", [])
    found, suggestions = cat.find_service("servce-c")
    assert found is None and suggestions[0] == "service-c"


def test_an_alias_that_collides_with_a_later_name_goes_to_the_first_object(tmp_path: Path) -> None:
    text = CATALOG.replace("aliases: [backend]", "aliases: [service-c]")
    cat = load(tmp_path, text)
    # service-b is written first and claims "service c" by alias: the earlier object wins, as before.
    assert cat.find_service("service-c") == ("service-b", [])


def test_suggestions_among_twenty_thousand_checks_are_as_close_as_an_exhaustive_search(tmp_path: Path) -> None:
    checks = "".join(f"  - name: port-{i:05d}\n    type: tcp\n    service: service-b\n"
                     f"    host: 127.0.0.1\n    port: 1\n" for i in range(20_000))
    cat = load(tmp_path, CATALOG.split("checks:\n")[0] + "checks:\n" + checks)
    assert cat.find_check("Port 12345") == ("port-12345", [])
    assert "port-12345" in cat.find_check("prot-12345")[1]
    assert cat.find_check("nothing like it")[1] == []
    keys = [normalize(n) for n in cat.checks]
    rng = random.Random(7)
    for _ in range(15):
        # One deleted, inserted or replaced character: the typos people make on a phone.
        key, i = rng.choice(keys), rng.randrange(9)
        typo = rng.choice([key[:i] + key[i + 1:], key[:i] + "x" + key[i:], key[:i] + "z" + key[i + 1:]])
        found, suggestions = cat.find_check(typo)
        if found is not None:
            continue
        best = difflib.get_close_matches(typo, keys, n=1, cutoff=0.6)[0]
        ratio = difflib.SequenceMatcher(None, typo, normalize(suggestions[0])).ratio()
        assert ratio >= difflib.SequenceMatcher(None, typo, best).ratio(), (typo, suggestions, best)


def test_libyaml_and_python_parsers_give_the_same_locations(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        base: &b {x: 1, y: 'two'}
        obj:
          <<: *b
          z: |
            line1
            line2
          w: >-
            folded
            text
          list: [1, "two", {three: 3}]
        scalars: [~, null, Null, '', yes, No, on, OFF, true, False, y, n, 0x1F, 0o17, -12, +3, 1_000, 3.5, .inf,
                  -.Inf, .NaN, 1e3, 2026-12-07, 2026-12-07T13:20:00Z, 12:30:00, '12', "yes", !!str 5, !!int "7",
                  team-a, tcp, oops, 0day, =, <<x, -x, .x, ~x, "", ' ', &a anchored, *a]
        empty:
        """) + CATALOG

    def marks(node: yaml.Node | None, out: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        assert node is not None
        out.append((type(node).__name__, node.tag, node.start_mark.line, node.start_mark.column,
                    node.value if isinstance(node.value, str) else None))
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        for child in children:
            marks(child, out)
        return out

    assert marks(reading.compose(text), []) == marks(yaml.compose(text, Loader=yaml.SafeLoader), [])


def test_prepare_builds_every_index_without_changing_answers(tmp_path: Path) -> None:
    cat = load(tmp_path)
    before = (cat.checks_of_system("system-a"), cat.find_service("backend"), cat.find_check("c http"))
    fresh = load(tmp_path)
    fresh.prepare()
    assert (fresh.checks_of_system("system-a"), fresh.find_service("backend"), fresh.find_check("c http")) == before
