"""Idle memory of an opsroom server with all seven chat adapters configured, connected and idle.

A real `python -m opsroom serve` process (its catalog from tests/factories.py small_catalog)
with 20 rooms, each bound to a Matrix room (real Synapse), an IRC channel (real ngircd, over
TLS), a MUC (real prosody, STARTTLS), a Slack channel, a Mattermost channel and a Teams
conversation; the Telegram fake has one group chat, bound to the first room. The SaaS platforms
are their local fakes (src/opsroom/chat/platforms/*/fake_server.py) in a helper process of
this bench, so neither they nor the real servers are in the measured process.

Baseline, in the same run and side by side: the same server with the same 20 rooms and no chat
platform configured (just the web room).

Both servers are started; once every adapter of the full one reports connected on /metrics
(`opsroom_chat_connected 1` for all seven), both sit idle for 10 s (quick) or 30 s (full); the
RSS of each server process (not its children) is sampled every second, the figure is the last
sample. Target <= 180 MB.

    .venv/bin/python bench/chat_idle_rss.py --quick    # 10 s idle, < 60 s
    .venv/bin/python bench/chat_idle_rss.py            # 30 s idle
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, info, kill_all, loadavg, r, repo_on_path

TARGET_MB = 180.0
MB = 1024 * 1024
ROOMS = 20
SEVEN = ("matrix", "irc", "xmpp", "slack", "mattermost", "teams", "telegram")
CONNECT_TIMEOUT_S = 60.0


# --- the helper process with the four SaaS fakes ------------------------------------


async def fakes_main() -> None:
    """Start the Slack, Mattermost, Telegram and Teams fakes; print their catalog items as one
    JSON line; serve until stdin closes."""
    from opsroom.chat.platforms.mattermost.fake_server import FakeMattermost, mm_id
    from opsroom.chat.platforms.slack.fake_server import FakeSlack
    from opsroom.chat.platforms.teams.fake_server import TeamsFake
    from opsroom.chat.platforms.telegram.fake_server import TelegramFake

    slack = FakeSlack(channels={f"C0OPS{i:02d}": f"ops{i:02d}" for i in range(ROOMS)})
    mm = FakeMattermost(channels={mm_id(f"ops{i:02d}"): f"ops{i:02d}" for i in range(ROOMS)})
    tg, teams = TelegramFake(), TeamsFake()
    for fake in (slack, mm, tg, teams):
        await fake.start()
    items = {
        "slack": {"name": "slack", "type": "slack", "app_token": slack.app_token, "bot_token": slack.bot_token,
                  "signing_secret": slack.signing_secret, "api_url": slack.api_url},
        "mattermost": {"name": "mattermost", "type": "mattermost", "url": mm.url, "token": mm.bot_token,
                       "action_secret": "mattermost-action-secret-for-the-bench"},
        "telegram": {"name": "telegram", "type": "telegram", "token": tg.token, "api_url": tg.api_url,
                     "mode": "polling"},
        "teams": {"name": "teams", "type": "teams", "app_id": teams.app_id, "app_password": teams.app_password,
                  "openid_url": teams.openid_url, "token_url": teams.token_url, "service_url": teams.service_url},
    }
    channels = {"slack": list(slack.channels), "mattermost": list(mm.channels),
                "teams": [f"19:ops-{i:02d}@thread.tacv2" for i in range(ROOMS)], "telegram": [str(tg.chat["id"])]}
    print(json.dumps({"items": items, "channels": channels}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for stop in (slack.stop, mm.stop, tg.close, teams.close):
        with contextlib.suppress(Exception):
            await stop()


# --- the measuring side ------------------------------------------------------------------


def real_servers() -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Synapse, ngircd and prosody started (blocking helpers); the bot's catalog items and the
    channels each room binds to."""
    from tests.chat.servers.prosody import DOMAIN, MUC, password
    from tests.chat.servers.prosody import shared as prosody
    from tests.chat.servers.synapse import shared as synapse

    from chat_platforms import bench_ngircd

    mx = synapse()
    irc = bench_ngircd()
    irc.start()
    xm = prosody()
    rooms = [mx.create_room("alice", members=["opsroom"], join=[]) for _ in range(ROOMS)]
    bot = mx.accounts["opsroom"]
    items = {
        "matrix": {"name": "matrix", "type": "matrix", "homeserver": mx.url, "user_id": bot.user_id,
                   "access_token": bot.access_token},
        "irc": {"name": "irc", "type": "irc", "host": "localhost", "port": irc.tls_port, "tls": True,
                "ca_file": str(irc.cert), "nick": "opsroom"},
        "xmpp": {"name": "xmpp", "type": "xmpp", "jid": f"opsroom@{DOMAIN}", "password": password("opsroom"),
                 "host": "127.0.0.1", "port": xm.port, "ca_file": str(xm.cert), "nick": "opsroom"},
    }
    channels = {"matrix": rooms, "irc": [f"#ops-{i:02d}" for i in range(ROOMS)],
                "xmpp": [f"ops-{i:02d}@{MUC}" for i in range(ROOMS)]}
    return items, channels


def catalog(tmp: Path, items: dict[str, dict[str, Any]], channels: dict[str, list[str]]) -> Path:
    from tests.factories import small_catalog

    rooms = []
    for i in range(ROOMS):
        bind = [f"{p}:{channels[p][i]}" for p in items if i < len(channels[p])]
        rooms.append({"name": f"r{i:02d}", **({"bind": bind} if bind else {})})
    extra: dict[str, Any] = {"rooms": rooms}
    if items:
        extra["platforms"] = list(items.values())
    tmp.mkdir(parents=True, exist_ok=True)
    return small_catalog(tmp, **extra)


def connected(base: str) -> dict[str, float]:
    import httpx

    text = httpx.get(base + "/metrics", timeout=5).text
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^opsroom_chat_connected\{platform="([^"]+)"\} (\S+)$', text, re.M)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 s idle (< 60 s)")
    parser.add_argument("--idle", type=float, default=None, help="seconds idle (default 30, --quick 10)")
    parser.add_argument("--fakes-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    repo_on_path()
    if args.fakes_child:
        asyncio.run(fakes_main())
        return
    idle = args.idle if args.idle is not None else (10.0 if args.quick else 30.0)
    from tests.e2e.harness import start_server

    tmp = Path(tempfile.mkdtemp(prefix="opsroom-chatrss-"))
    fakes: subprocess.Popen[bytes] | None = None
    servers: list[Any] = []
    t0 = time.monotonic()
    try:
        fakes = subprocess.Popen([sys.executable, __file__, "--fakes-child"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE)
        items, channels = real_servers()
        assert fakes.stdout is not None
        got = json.loads(fakes.stdout.readline())
        items.update(got["items"])
        channels.update(got["channels"])
        info(f"Synapse, ngircd, prosody up; fakes up in pid {fakes.pid}: {time.monotonic() - t0:.1f} s")

        base_srv = start_server(tmp / "base", ["serve", "--catalog", str(catalog(tmp / "base", {}, {}))])
        servers.append(base_srv)
        full_srv = start_server(tmp / "full", ["serve", "--catalog", str(catalog(tmp / "full", items, channels))])
        servers.append(full_srv)
        info(f"servers answer /healthz: baseline pid {base_srv.proc.pid}, full pid {full_srv.proc.pid}: "
             f"{time.monotonic() - t0:.1f} s")
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        state: dict[str, float] = {}
        while time.monotonic() < deadline:
            state = connected(full_srv.base)
            if all(state.get(p) == 1.0 for p in SEVEN):
                break
            time.sleep(0.2)  # polling another process's /metrics: nothing to await
        else:
            raise RuntimeError(f"not all adapters connected after {CONNECT_TIMEOUT_S:g} s: {state}\n"
                               f"{full_srv.output()[-3000:]}")
        info(f"all seven adapters connected ({sorted(state)}): {time.monotonic() - t0:.1f} s; idle {idle:g} s")

        procs = {"full": psutil.Process(full_srv.proc.pid), "base": psutil.Process(base_srv.proc.pid)}
        samples: dict[str, list[float]] = {k: [] for k in procs}
        start = time.monotonic()
        cpu0 = {k: p.cpu_times() for k, p in procs.items()}
        while True:
            for k, p in procs.items():
                samples[k].append(p.memory_info().rss / MB)
            elapsed = time.monotonic() - start
            if elapsed >= idle:
                break
            time.sleep(min(1.0, idle - elapsed))
        cpu1 = {k: p.cpu_times() for k, p in procs.items()}
        uss = {k: p.memory_full_info().uss / MB for k, p in procs.items()}
        threads = {k: p.num_threads() for k, p in procs.items()}
        still = connected(full_srv.base)
        children = len(procs["full"].children(recursive=True))
    finally:
        for srv in servers:
            with contextlib.suppress(Exception):
                srv.stop()
        if fakes is not None:
            with contextlib.suppress(Exception):
                assert fakes.stdin is not None
                fakes.stdin.close()
                fakes.wait(5)
            if fakes.poll() is None:
                kill_all([fakes.pid], grace=2.0)
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.monotonic() - start
    cpu = {k: ((cpu1[k].user + cpu1[k].system) - (cpu0[k].user + cpu0[k].system)) / elapsed * 100 for k in procs}
    for k, label in (("base", "baseline (web room only)"), ("full", "all seven adapters")):
        info(f"{label}: RSS over the idle period (MB): " + ", ".join(f"{m:.1f}" for m in samples[k]))
        info(f"{label}: RSS {samples[k][-1]:.1f} MB, USS {uss[k]:.1f} MB, {threads[k]} threads, "
             f"CPU while idle {cpu[k]:.1f}% of a core")
    rss, base = samples["full"][-1], samples["base"][-1]
    info(f"the seven adapters cost +{rss - base:.1f} MB RSS; still connected at the end: "
         f"{all(still.get(p) == 1.0 for p in SEVEN)}; server children (not counted): {children}")
    info(f"target <= {TARGET_MB:g} MB: {'met' if rss <= TARGET_MB else 'MISSED'}")
    emit({
        "figure": "chat_idle_rss_mb",
        "value": r(rss, 1),
        "unit": "MB",
        "target": TARGET_MB,
        "baseline": r(base, 1),
        "baseline_kind": "the same server (20 rooms) with no chat platform configured, same run",
        "uss_mb": r(uss["full"], 1),
        "baseline_uss_mb": r(uss["base"], 1),
        "adapters_mb": r(rss - base, 1),
        "rss_first_mb": r(samples["full"][0], 1),
        "growth_mb": r(rss - samples["full"][0], 1),
        "idle_s": idle,
        "idle_cpu_pct": r(cpu["full"], 1),
        "baseline_idle_cpu_pct": r(cpu["base"], 1),
        "threads": threads["full"],
        "rooms": ROOMS,
        "target_met": rss <= TARGET_MB,
        "loadavg": loadavg(),
    })


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
