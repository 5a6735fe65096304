"""The live streams (web/streams.py) against a real `opsroom serve`: an execution's output as it is
printed, replayed whole to a late reader and never twice to one that joins mid-run; a room's
messages resumed after an id; every stream ended cleanly when the server stops."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.sse import LINES, PAUSE_S, events, read_all, served

pytestmark = pytest.mark.e2e


def _text(got: list) -> str:  # type: ignore[type-arg]
    return "".join(e.data["text"] for e in got if e.name == "output")


def test_execution_stream_live_late_and_mid_run(tmp_path: Path) -> None:
    with served(tmp_path, users=("you",)) as s, s.api("you") as api:
        eid = api.post("/runbooks/slow/run", json={"params": {}}).json()["id"]
        started = time.monotonic()
        live = read_all(api, f"/executions/{eid}/stream")
        names = [e.name for e in live]
        assert names[0] == "execution" and names[-1] == "end", names
        assert live[-1].data["status"] == "succeeded" and live[-1].data["id"] == eid
        outputs = [e for e in live if e.name == "output"]
        stored = api.get(f"/executions/{eid}").json()["output"]
        assert _text(live) == stored and stored.endswith("".join(f"line {i}\n" for i in range(LINES)))
        # Live: the first line came long before the end (the run pauses PAUSE_S after each line).
        assert outputs[0].at - started < live[-1].at - started - PAUSE_S, [e.at - started for e in live]
        assert all(e.data["at"] and ("+00:00" in e.data["at"] or e.data["at"].endswith("Z")) for e in outputs)

        # Late: the run is over; its whole output is replayed once, then the end.
        late = read_all(api, f"/executions/{eid}/stream")
        assert [e.name for e in late] == ["execution", "output", "end"]
        assert _text(late) == _text(live)

        # Mid-run: joins after the first line; still every line exactly once.
        second = api.post("/runbooks/slow/run", json={"params": {}}).json()["id"]
        time.sleep(PAUSE_S * 1.3)
        mid = read_all(api, f"/executions/{second}/stream")
        assert _text(mid) == api.get(f"/executions/{second}").json()["output"], [e.data for e in mid]
        assert mid[0].data["status"] == "running"


def test_failed_run_ends_with_its_status(tmp_path: Path) -> None:
    with served(tmp_path, users=("you",)) as s, s.api("you") as api:
        eid = api.post("/runbooks/fails/run", json={"params": {}}).json()["id"]
        got = read_all(api, f"/executions/{eid}/stream")
        assert got[-1].name == "end" and got[-1].data["status"] == "failed"
        assert "about to fail" in _text(got)


def test_room_stream_resumes_after_an_id(tmp_path: Path) -> None:
    with served(tmp_path, users=("you",)) as s, s.api("you") as api:
        seen: list = []  # type: ignore[type-arg]

        def listen() -> None:
            with api.stream("GET", "/rooms/ops/stream") as resp:
                for ev in events(resp):
                    seen.append(ev)
                    if (ev.name == "message" and "succeeded in" in ev.data["text"]) or ev.name == "error":
                        return

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        time.sleep(0.5)
        api.post("/runbooks/count/run", json={"params": {"n": "5"}, "room": "ops"})
        reader.join(20)
        messages = [e for e in seen if e.name == "message"]
        assert messages, [e.name for e in seen]
        ids = [int(e.id) for e in messages]
        assert ids == sorted(ids) and len(set(ids)) == len(ids) and [m.data["id"] for m in messages] == ids
        assert all({"id", "at", "author", "kind", "text"} <= set(m.data) for m in messages)
        # Resuming after the first: the others come again (replayed from the store), nothing before.
        with api.stream("GET", "/rooms/ops/stream", headers={"Last-Event-ID": str(ids[0])}) as resp:
            again = []
            for ev in events(resp):
                again.append(int(ev.id))
                if len(again) == len(ids) - 1:
                    break
        assert again == ids[1:]
        by_query = read_all(api, f"/rooms/ops/stream?after={ids[-2]}", until="message")
        assert [int(e.id) for e in by_query] == ids[-1:]


def test_open_streams_end_when_the_server_stops(tmp_path: Path) -> None:
    with served(tmp_path, users=("you",)) as s, s.api("you") as api:
        eid = api.post("/runbooks/slow/run", json={"params": {}}).json()["id"]
        last: dict[str, list] = {"room": [], "execution": []}  # type: ignore[type-arg]

        def listen(kind: str, path: str) -> None:
            try:
                with api.stream("GET", path) as resp:
                    for ev in events(resp):
                        last[kind].append(ev)
                        if ev.name in ("end", "error"):
                            return
            except httpx.HTTPError as exc:
                last[kind].append(exc)

        readers = [threading.Thread(target=listen, args=a, daemon=True)
                   for a in (("room", "/rooms/ops/stream"), ("execution", f"/executions/{eid}/stream"))]
        for r in readers:
            r.start()
        time.sleep(1.0)
        stopping = time.monotonic()
        s.server.stop(signal.SIGTERM)
        took = time.monotonic() - stopping
        for r in readers:
            r.join(5)
            assert not r.is_alive()
        assert s.server.proc.returncode in (0, -signal.SIGTERM) and took < 10, (took, s.server.output()[-2000:])
        room = [e for e in last["room"] if not isinstance(e, Exception)]
        assert room and room[-1].name == "error" and room[-1].data["code"] == "server_stopping", last["room"]
        ended = last["execution"][-1]
        # The run is interrupted by the stop: its stream either says so (end) or that the server stops.
        assert ended.name in ("end", "error"), last["execution"]
