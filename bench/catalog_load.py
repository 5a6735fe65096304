"""Catalog load: a 20,000-check catalog read and validated the way the server starts and reloads.

A realistic catalog is written to a temp dir as a team would keep it: one directory per team
with its systems, services, checks (http, tcp, process, command and a few synthetic, with
intervals, retries and thresholds; anchors and merge keys for shared defaults; `${VAR}`
for hosts), runbooks and rules, plus shared environments, rooms, aliases, roles and users.
The figure is `load_catalog` (catalog/loader.py) on it, best of several runs. Baseline, in the
same run: a bare `yaml.load` of the same files with libyaml (yaml.CSafeLoader), which
validates nothing and knows no line numbers; the figure is also printed as a ratio to it.
The same is measured on the lean one-file catalog bench/check_throughput.py loads (lean_s).

    .venv/bin/python bench/catalog_load.py --quick
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, info, r, repo_on_path

repo_on_path()

import yaml  # noqa: E402

from opsroom.catalog.loader import load_catalog  # noqa: E402

TARGET_S = 2.0
TEAMS = 20
SYSTEMS_PER_TEAM = 10
SERVICES_PER_SYSTEM = 10
CHECKS_PER_SERVICE = 10  # 20 teams x 10 systems x 10 services x 10 checks = 20,000


def _check(svc: str, i: int, first: bool) -> str:
    """One check of a service, the type chosen as a team's mix would be (mostly http and tcp, a
    synthetic transaction for a system's first service); the file's first service names its HTTP
    defaults (`&http_defaults`), the others merge them."""
    kind = ("http", "http", "http", "tcp", "tcp", "process", "command", "http", "tcp",
            "synthetic" if first else "tcp")[i]
    head = f"  - name: {svc}-{kind}-{i}\n    service: {svc}\n"
    if kind == "http" and i == 0 and first:
        return (head + f"    url: https://${{WEB_HOST:-{svc}.example.org}}/healthz\n"
                "    <<: &http_defaults\n      type: http\n      interval: 30s\n      timeout: 5s\n"
                "      max_attempts: 3\n      expect_status: [200, 204]\n")
    if kind == "http" and i == 0:
        return head + f"    url: https://${{WEB_HOST:-{svc}.example.org}}/healthz\n    <<: *http_defaults\n"
    if kind == "http":
        return (head + "    <<: *http_defaults\n"
                f"    url: http://{svc}.internal:{8000 + i}/status?probe={i}\n"
                f"    latency_warning_ms: {200 + i * 10}\n    latency_critical_ms: {800 + i * 20}\n"
                f"    body_match: '\"status\": *\"(ok|up)\"'\n    retry_interval: 10s\n")
    if kind == "tcp":
        return (head + f"    type: tcp\n    host: {svc}.internal\n    port: {5432 + i}\n"
                f"    interval: {15 * (i % 4 + 1)}s\n    timeout: 3s\n    flap_low: 0.2\n    flap_high: 0.4\n")
    if kind == "process":
        return (head + f"    type: process\n    process_name: {svc.split('-')[-1]}d\n    min_count: 2\n"
                "    interval: 1m\n    description: the daemon and its worker\n")
    if kind == "command":
        return (head + "    type: command\n    argv: [/usr/lib/nagios/plugins/check_disk, -w, '20%', -c, '10%',"
                f" -p, /srv/{svc}]\n    interval: 5m\n    timeout: 30s\n    max_attempts: 5\n")
    return (head + "    type: synthetic\n    interval: 2m\n    budget_ms: 1500\n"
            "    variables: {user: probe}\n    steps:\n"
            f"      - name: login\n        url: https://{svc}.example.org/login\n        method: POST\n"
            "        json_body: {user: '{{ vars.user }}'}\n        extract: {token: 'json:$.token'}\n"
            f"      - name: dashboard\n        url: https://{svc}.example.org/dash\n"
            "        headers: {Authorization: 'Bearer {{ vars.token }}'}\n        body_match: Dashboard\n")


def write_catalog(root: Path) -> int:
    """The catalog's files under `root`; returns the number of checks written."""
    (root / "environments.yaml").write_text(
        "environments:\n  - name: prod\n    title: Production\n    protected: true\n"
        "  - name: staging\n  - name: dev\n")
    rooms, aliases, checks = [], [], 0
    for t in range(TEAMS):
        team = f"team{t:02d}"
        d = root / team
        d.mkdir()
        systems, services, runbooks, rules = ["systems:\n"], ["services:\n"], ["runbooks:\n"], ["rules:\n"]
        for s in range(SYSTEMS_PER_TEAM):
            system = f"{team}-sys{s:02d}"
            env = ("prod", "prod", "staging", "dev")[s % 4]
            systems.append(f"  - name: {system}\n    title: {team.title()} system {s}\n    environment: {env}\n"
                           f"    description: what {team} runs as part {s}\n")
            body = ["checks:\n"]
            for v in range(SERVICES_PER_SYSTEM):
                svc = f"{system}-svc{v:02d}"
                deps = f"    depends_on: [{system}-svc{v - 1:02d}]\n" if v else ""
                services.append(f"  - name: {svc}\n    title: Service {v} of {system}\n    system: {system}\n"
                                f"{deps}    aliases: [{team}-{s}-{v}]\n")
                body.extend(_check(svc, i, v == 0) for i in range(CHECKS_PER_SERVICE))
                checks += CHECKS_PER_SERVICE
                if v % 2 == 0:  # a rule for every other service: the ones a restart fixes
                    rules.append(f"  - name: restart-{svc}\n    when:\n      check: {svc}-http-0\n"
                        "      state: [CRITICAL]\n      condition: \"attempt >= 2 and state == 'CRITICAL'\"\n"
                        f"    then:\n      runbook: {team}-restart\n      params:\n"
                        "        service: '{{ service }}'\n    policy:\n      approval: role approver\n"
                        "      cooldown: 5m\n      max_runs: 2\n")
            (d / f"checks-{system}.yaml").write_text("".join(body))
        runbooks.append(
            f"  - name: {team}-restart\n    title: Restart a {team} service\n    parameters:\n"
            "      service: {type: service}\n      reason: {type: string, required: false, default: ''}\n"
            "    steps:\n      - name: restart\n        command: [systemctl, restart, '{{ params.service }}']\n"
            "        timeout: 2m\n      - check: '{{ params.service }}-http-0'\n        deadline: 1m\n"
            "    summary: restart {{ params.service }}\n"
            "    success_message: '{{ params.service }} restarted (run {{ execution.id }})'\n"
            f"  - name: {team}-diagnose\n    environment: prod\n    parameters:\n"
            "      verbose: {type: bool, required: false, default: false}\n"
            "    steps:\n      - command: [uptime]\n      - command: [journalctl, -n, '100']\n")
        for name, parts in (("systems", systems), ("services", services), ("runbooks", runbooks),
                            ("rules", rules)):
            (d / f"{name}.yaml").write_text("".join(parts))
        rooms.append(f"  - name: {team}\n    title: {team.title()}\n"
                     f"    systems: [{', '.join(f'{team}-sys{s:02d}' for s in range(SYSTEMS_PER_TEAM))}]\n")
        aliases.append(f"  - pattern: restart {team} {{service}}\n    runbook: {team}-restart\n")
    (root / "rooms.yaml").write_text("rooms:\n  - name: ops\n" + "".join(rooms))
    (root / "aliases.yaml").write_text("aliases:\n" + "".join(aliases))
    (root / "access.yaml").write_text(
        "roles:\n  - name: sre\n    inherits: [operator]\n    permissions: ['runbook.run']\n"
        "users:\n" + "".join(f"  - name: user{u:02d}\n    roles: [sre{', approver' if u % 5 == 0 else ''}]\n"
                             for u in range(40)))
    return checks


def write_lean(root: Path, n: int) -> None:
    """The catalog bench/check_throughput.py loads (one file, six lines a tcp check): the shape the
    earlier 4.3-7.0 s figure for loading 20,000 checks was measured on."""
    out = ["environments:\n  - name: bench\nsystems:\n"]
    out += [f"  - name: sys-{s:03d}\n    environment: bench\n" for s in range(100)]
    out += ["services:\n"] + [f"  - name: svc-{s:03d}\n    system: sys-{s:03d}\n" for s in range(100)]
    out += ["checks:\n"] + [f"  - name: tcp-{i:05d}\n    type: tcp\n    service: svc-{i % 100:03d}\n"
                             "    host: 127.0.0.1\n    port: 9\n    interval: 4s\n    timeout: 10s\n"
                             for i in range(n)]
    (root / "checks.yaml").write_text("".join(out))


def measure(root: Path, repeat: int) -> dict[str, float]:
    """Best wall and CPU seconds of load_catalog and of the bare load, runs alternating so that other
    load on the machine falls on both alike."""
    files = sorted(root.rglob("*.yaml"))

    def bare() -> None:
        for p in files:
            yaml.load(p.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)

    def bare_paused() -> None:  # the same with the cyclic collector off, as load_catalog runs
        gc.disable()
        try:
            bare()
        finally:
            gc.enable()

    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "paused": [], "load": []}
    for _ in range(repeat):
        for name, fn in (("bare", bare), ("paused", bare_paused), ("load", lambda: load_catalog(root))):
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {f"{name}_{kind}": min(t[i] for t in times) for name, times in runs.items()
            for i, kind in enumerate(("s", "cpu_s"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", help="write the catalog to this directory and keep it")
    args = parser.parse_args()
    repeat = 3 if args.quick else 7
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="opsroom-catalog-"))
    lean = Path(tempfile.mkdtemp(prefix="opsroom-catalog-lean-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        os.environ.pop("WEB_HOST", None)  # the default after `:-` is used
        n = write_catalog(root)
        write_lean(lean, n)
        for where, what in ((root, "team catalog"), (lean, "lean catalog")):
            files = sorted(where.rglob("*.yaml"))
            info(f"{what}: {n:,} checks in {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB")
            assert len(load_catalog(where).checks) == n
        m = measure(root, repeat)
        small = measure(lean, repeat)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(lean, ignore_errors=True)
    for what, x in (("team", m), ("lean", small)):
        info(f"{what}: yaml.load with CSafeLoader {x['bare_s']:.3f} s (CPU {x['bare_cpu_s']:.3f} s; collector off "
             f"{x['paused_s']:.3f} s); load_catalog {x['load_s']:.3f} s (CPU {x['load_cpu_s']:.3f} s), "
             f"{x['load_s'] / x['bare_s']:.2f}x ({x['load_s'] / x['paused_s']:.2f}x with the collector off); "
             f"best of {repeat}")
    took = m["load_s"]
    emit({"figure": f"load and validate a {n:,}-check catalog (team catalog), best of {repeat}", "value": r(took),
          "unit": "s", "target": f"<= {TARGET_S:g} s", "baseline": f"bare yaml.load (CSafeLoader) {m['bare_s']:.3f} s",
          "ratio": r(took / m["bare_s"], 2), "ratio_collector_off": r(took / m["paused_s"], 2),
          "cpu_s": r(m["load_cpu_s"]), "bare_cpu_s": r(m["bare_cpu_s"]),
          "lean_s": r(small["load_s"]), "lean_ratio": r(small["load_s"] / small["bare_s"], 2),
          "loadavg": [round(x, 1) for x in os.getloadavg()], "ok": took <= TARGET_S})


if __name__ == "__main__":
    main()
