"""A Nagios plugin's perfdata on /metrics, read over HTTP from a running server as Prometheus would."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from opsroom.secrets.masking import register
from opsroom.web.metrics import MAX_PERFDATA_LABELS
from tests.chat.harness import serve

PLUGINS = Path("/usr/lib/nagios/plugins")
WEIRD = 'we"ird\\ label} x'  # a quote, a backslash, a brace and a space: all legal in perfdata
SECRET = "perfdata-secret-4711"


def _perfdata(text: str) -> dict[tuple[str, str], float]:
    return {(s.labels["check"], s.labels["label"]): s.value
            for family in text_string_to_metric_families(text) if family.name == "opsroom_check_perfdata"
            for s in family.samples}


async def test_check_http_perfdata_arrives_in_metrics(tmp_path: Path, http_target: int) -> None:
    register(SECRET)  # as the catalog does for a ${secret:…} a check's argv uses
    many = "print('MANY OK|' + ' '.join(f'l{i:02d}={i}ms' for i in range(40)))"
    weird = "print(\"WEIRD OK|'" + WEIRD.replace("\\", "\\\\").replace('"', '\\"') + "'=1.5s;1;2 plain=7% " + \
        f"'dsn user:{SECRET}'=3\")"
    checks = [
        {"name": "web-http", "type": "command", "service": "svc",
         "argv": [str(PLUGINS / "check_http"), "-H", "127.0.0.1", "-p", str(http_target)]},
        {"name": "many", "type": "command", "service": "svc", "argv": [sys.executable, "-c", many]},
        {"name": "weird", "type": "command", "service": "svc", "argv": [sys.executable, "-c", weird]},
    ]
    async with serve(tmp_path, checks=checks) as served:
        mon = served.rt.monitor
        assert mon is not None
        async with httpx.AsyncClient(base_url=served.base, timeout=10) as http:
            before = _perfdata((await http.get("/metrics")).text)
            assert not any(check == "web-http" for check, _ in before)  # nothing until it has run
            for name in ("web-http", "many", "weird"):
                await mon.run_check(name)
            response = await http.get("/metrics")
        assert response.status_code == 200
        series = _perfdata(response.text)
        last = mon.last["web-http"].perfdata
        last_weird = mon.last["weird"].perfdata
    assert mon.status["web-http"].state == "OK"
    # check_http's time (seconds) and size (bytes), units dropped, exactly the values the check kept.
    assert set(last) == {"time", "size"} and last["size"] > 1000
    assert series[("web-http", "time")] == last["time"]
    assert series[("web-http", "size")] == last["size"]
    # A plugin with 40 labels: the first 32 by name are exported, the rest are not (bounded cardinality).
    many_labels = sorted(label for check, label in series if check == "many")
    assert many_labels == [f"l{i:02d}" for i in range(MAX_PERFDATA_LABELS)]
    assert series[("many", "l05")] == 5.0
    # A label with a quote, backslash and brace is escaped on the wire and reads back as written.
    assert series[("weird", WEIRD)] == 1.5 and series[("weird", "plain")] == 7.0
    # Secret leak: a label quoting a registered secret is not on the unauthenticated /metrics at all.
    assert last_weird[f"dsn user:{SECRET}"] == 3.0
    assert sorted(label for check, label in series if check == "weird") == sorted(["plain", WEIRD])
    assert SECRET not in response.text
    assert 'label="we\\"ird\\\\ label} x"' in response.text
    # The state is there too, by check.
    assert 'opsroom_check_state{check="web-http",state_type="hard"} 0.0' in response.text
