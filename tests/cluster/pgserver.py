"""A private PostgreSQL for tests that kill the database: the machine's shared one serves others.

PostgreSQL refuses to run as root, so initdb and the postmaster run as the `postgres` system user
(runuser) in a temp dir of their own: data dir, unix socket, log. TCP on a free loopback port,
trust auth. fsync is off for speed: kill9 kills processes, not the machine, so what a commit
wrote is still in the kernel's page cache and survives (synchronous_commit stays on: a WAL
record still in PostgreSQL's shared memory would die with it).

    pg = PrivatePg()
    pg.start()
    url = pg.create_database("opsroom")   # postgresql://postgres@127.0.0.1:PORT/opsroom
    pg.kill9()                            # the postmaster and every backend, SIGKILL
    pg.restart()                          # same data dir and port; crash recovery runs
    pg.stop()                             # and removes the temp dir
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.factories import free_port

BIN = Path(os.environ.get("OPSROOM_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"
START_TIMEOUT_S = 30.0


class PgServerError(RuntimeError):
    """The private PostgreSQL could not be set up or started; the message carries its log tail."""


def available() -> str | None:
    """Why a private PostgreSQL cannot run here (for a skip), or None when it can."""
    if not (BIN / "postgres").exists():
        return f"no PostgreSQL binaries in {BIN} (set OPSROOM_TEST_PG_BIN)"
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        return f"no {OS_USER!r} system user to run PostgreSQL as"
    if os.geteuid() != 0:
        return "running PostgreSQL as the postgres user takes root (runuser)"
    return None


def _as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", OS_USER, "--", *argv]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class PrivatePg:
    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths and addresses ------------------------------------------------------------------
    @property
    def data(self) -> Path:
        assert self.root is not None, "start() first"
        return self.root / "data"

    @property
    def log(self) -> Path:
        assert self.root is not None, "start() first"
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        """The admin URL (database `postgres`); create_database gives one per database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except (OSError, AssertionError):
            return ""

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> PrivatePg:
        """initdb a fresh cluster in a new temp dir and start it; removes it all on failure."""
        why = available()
        if why:
            raise PgServerError(why)
        self.root = Path(tempfile.mkdtemp(prefix="opsroom-pg-"))
        # Also at interpreter exit: a run that ends without the fixture's teardown (Ctrl-C twice,
        # sys.exit in a plugin) leaves no postmaster behind. (A SIGKILLed pytest still does.)
        atexit.register(self.stop)
        try:
            user = pwd.getpwnam(OS_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            done = subprocess.run(
                _as_postgres(str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                             "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"),
                cwd=self.root, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise PgServerError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        assert self.root is not None
        with self.log.open("ab") as log:
            # A session of its own: a Ctrl-C meant for pytest does not reach the postmaster first.
            self._proc = subprocess.Popen(
                _as_postgres(str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                             "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "shared_buffers=32MB",
                             "-c", "max_connections=100", "-c", "logging_collector=off"),
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PgServerError(f"postgres exited with {self._proc.returncode}:\n{self.output()}")
            ready = subprocess.run([str(BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                                    "-U", "postgres", "-t", "1"], timeout=10)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise PgServerError(f"postgres did not accept connections within {START_TIMEOUT_S:.0f} s:\n"
                            f"{self.output()}")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError, AssertionError):
            return None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the postmaster and every process it started: the connections drop at once (the
        kernel resets their sockets) and nothing shuts down cleanly, as in a crash."""
        pid = self.postmaster_pid()
        if pid is None or not _alive(pid):
            return
        # Stopped, the postmaster forks no new backend between the listing and the kill. Its
        # children are session leaders of their own (InitPostmasterChild), so a process-group
        # kill would miss them: they are found by parent pid.
        os.kill(pid, signal.SIGSTOP)
        victims = [*_descendants(pid), pid]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        if self._proc is not None:
            # runuser stops itself when its child stops (as su does): woken, it reaps the
            # postmaster. A restart must not find that pid still there, even as a zombie: the
            # new postmaster would take the old lock file for a live server.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGCONT)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        deadline = time.monotonic() + 10
        while _exists(pid) or any(_alive(v) for v in victims):
            if time.monotonic() > deadline:
                raise PgServerError(f"postgres processes {[v for v in victims if _alive(v)]} outlived SIGKILL")
            time.sleep(0.02)

    def pause(self) -> None:
        """SIGSTOP the postmaster and its children: a database that hangs (a frozen host, a
        partition that drops packets) rather than refusing. resume() lets it go on."""
        pid = self.postmaster_pid()
        if pid is None or not _alive(pid):
            raise PgServerError("postgres is not running")
        os.kill(pid, signal.SIGSTOP)
        for child in _descendants(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)

    def resume(self) -> None:
        pid = self.postmaster_pid()
        if pid is None:
            return
        for victim in [pid, *_descendants(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)
        if self._proc is not None:  # runuser stopped itself with its child (see kill9)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Start again on the same data dir and port (after kill9: crash recovery first)."""
        if self.running:
            raise PgServerError("postgres is still running; kill9() or stop() it first")
        self._launch()

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name` and return its URL."""
        done = subprocess.run([str(BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                               name], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise PgServerError(f"createdb {name} failed: {done.stderr.strip()}")
        return self.url_for(name)

    def stop(self) -> None:
        """Kill whatever runs and remove the temp dir; safe to call twice and after a failure."""
        with contextlib.suppress(Exception):
            self.kill9()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(10)
        self._proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        atexit.unregister(self.stop)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePg]:
    pg = PrivatePg()
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()
