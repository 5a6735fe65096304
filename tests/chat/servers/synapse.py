"""A real Synapse homeserver on loopback for the Matrix tests.

Synapse comes from PyPI, installed by scripts/install-synapse into a venv outside the checkout
(${OPSROOM_CACHE:-~/.cache/opsroom}/synapse), so only the first run pays. One homeserver is
started per test session (`shared()`; it starts in a few seconds) with SQLite, one plain-HTTP
client listener on 127.0.0.1, no federation, shared-secret registration, and rate limits raised
so the suite is not paced by them; the one account the rate-limit test uses keeps a realistic
limit through Synapse's per-user override. It can be stopped and started again on the same port
(the reconnect test); its data survives that, as a real server's does.

Everything here is blocking (urllib and subprocess) so it can serve a session-wide fixture
whatever event loop a test runs in; async tests call the slow parts through asyncio.to_thread.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import json
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.factories import free_port

ROOT = Path(__file__).resolve().parents[3]
INSTALL = ROOT / "scripts" / "install-synapse"
SERVER_NAME = "localhost"
START_TIMEOUT_S = 60.0
# The accounts every Matrix test can use. `opsroom` is the bot, `otherbot` another bot in the
# room, `slowbot` a bot account that keeps a realistic message rate limit, `admin` runs the
# admin API (rate-limit overrides) and is in no room.
PEOPLE = ("opsroom", "alice", "bob", "carol", "otherbot", "slowbot", "admin")
OPSROOM_BOTS = ("opsroom", "slowbot")  # accounts opsroom logs in as: they join bound rooms by themselves


def synapse_python() -> str:
    """The cached Synapse venv's python, installing it on first use."""
    try:
        done = subprocess.run([str(INSTALL)], check=True, capture_output=True, text=True, timeout=900)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"scripts/install-synapse failed:\n{exc.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Account:
    localpart: str
    user_id: str
    access_token: str
    device_id: str
    password: str


class MatrixError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class Synapse:
    def __init__(self, root: Path, *, python: str, port: int | None = None) -> None:
        self.root, self.python = root, python
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.accounts: dict[str, Account] = {}
        self.starts = 0

    # --- the process ---------------------------------------------------------

    def write_config(self) -> Path:
        cfg = self.root / "homeserver.yaml"
        if cfg.exists():
            return cfg
        key = self.root / "signing.key"
        # The key format Synapse reads: algorithm, version, unpadded base64 of a 32-byte seed.
        seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        key.write_text(f"ed25519 a_test {seed}\n")
        fast = {"per_second": 1000, "burst_count": 1000}
        config: dict[str, Any] = {
            "server_name": SERVER_NAME,
            "pid_file": str(self.root / "homeserver.pid"),
            "public_baseurl": self.url + "/",
            "listeners": [{"port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                           "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]}],
            "database": {"name": "sqlite3", "args": {"database": str(self.root / "homeserver.db")}},
            "log_config": str(self._log_config()),
            "media_store_path": str(self.root / "media"),
            "signing_key_path": str(key),
            "registration_shared_secret": self.secret,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "report_stats": False,
            "enable_metrics": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "federation_domain_whitelist": [],  # no federation: loopback only
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            "bcrypt_rounds": 4,  # registrations in milliseconds, not a quarter second each
            # Relaxed for the suite; `slowbot` gets Synapse's default message rate back through the
            # admin API's per-user override (see rate_limit()).
            "rc_message": fast,
            "rc_registration": fast,
            "rc_login": {"address": fast, "account": fast, "failed_attempts": fast},
            "rc_joins": {"local": fast, "remote": fast},
            "rc_joins_per_room": fast,
            "rc_invites": {"per_room": fast, "per_user": fast, "per_issuer": fast},
            "rc_room_creation": fast,
            "rc_admin_redaction": fast,
        }
        # JSON is YAML: no YAML writer needed for a file only Synapse reads.
        cfg.write_text(json.dumps(config, indent=1))
        return cfg

    def _log_config(self) -> Path:
        path = self.root / "log.yaml"
        path.write_text(json.dumps({
            "version": 1,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "filename": str(self.root / "homeserver.log"),
                                  "formatter": "plain"}},
            "root": {"level": "WARNING", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }))
        return path

    def start(self) -> None:
        cfg = self.write_config()
        out = (self.root / "stdout.log").open("ab")
        self.proc = subprocess.Popen([self.python, "-m", "synapse.app.homeserver", "-c", str(cfg)],
                                     cwd=self.root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"synapse exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/_matrix/client/versions", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)  # polling a process we do not control: no event to await
        self.stop()
        raise RuntimeError(f"synapse did not answer within {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        texts = [p.read_text(errors="replace")[-n:] for p in (self.root / "stdout.log", self.root / "homeserver.log")
                 if p.exists()]
        return "\n".join(texts)

    # --- the client-server API, blocking -------------------------------------

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
             token: str | None = None, timeout: float = 15.0) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                result: dict[str, Any] = json.loads(resp.read() or b"{}")
                return result
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)
            except ValueError:
                err = {"raw": raw.decode(errors="replace")}
            raise MatrixError(exc.code, err) from None

    def register(self, localpart: str, *, admin: bool = False) -> Account:
        """Shared-secret registration (the admin API that needs no admin account yet)."""
        if localpart in self.accounts:
            return self.accounts[localpart]
        nonce = self.call("GET", "/_synapse/admin/v1/register")["nonce"]
        password = secrets.token_hex(12)
        mac = hmac.new(self.secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                 b"admin" if admin else b"notadmin"]))
        got = self.call("POST", "/_synapse/admin/v1/register", {
            "nonce": nonce, "username": localpart, "password": password, "admin": admin,
            "mac": mac.hexdigest(), "displayname": localpart})
        account = Account(localpart, got["user_id"], got["access_token"], got["device_id"], password)
        self.accounts[localpart] = account
        return account

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{SERVER_NAME}"

    def rate_limit(self, localpart: str, *, per_second: int, burst: int) -> None:
        """Give one account its own message rate limit (Synapse's per-user override)."""
        who = urllib.parse.quote(self.user_id(localpart))
        self.call("POST", f"/_synapse/admin/v1/users/{who}/override_ratelimit",
                  {"messages_per_second": per_second, "burst_count": burst}, token=self.accounts["admin"].access_token)

    def create_room(self, owner: str, *, members: list[str], alias: str | None = None,
                    join: list[str] | None = None) -> str:
        """A private room owned by `owner`, `members` invited; those in `join` (default: every
        member but opsroom's accounts, which join by themselves like a deployed bot) join now."""
        body: dict[str, Any] = {"preset": "private_chat", "invite": [self.user_id(m) for m in members],
                                "name": alias or "test room"}
        if alias:
            body["room_alias_name"] = alias
        room_id: str = self.call("POST", "/_matrix/client/v3/createRoom", body,
                                 token=self.accounts[owner].access_token)["room_id"]
        for member in [m for m in members if m not in OPSROOM_BOTS] if join is None else join:
            self.join(member, room_id)
        return room_id

    def join(self, localpart: str, room: str) -> str:
        room_id: str = self.call("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room)}", {},
                                 token=self.accounts[localpart].access_token)["room_id"]
        return room_id

    def set_displayname(self, localpart: str, name: str) -> None:
        who = urllib.parse.quote(self.user_id(localpart))
        self.call("PUT", f"/_matrix/client/v3/profile/{who}/displayname", {"displayname": name},
                  token=self.accounts[localpart].access_token)


_SHARED: Synapse | None = None


def shared() -> Synapse:
    """The session's homeserver, started on first use with every account in PEOPLE registered;
    stopped when the test process exits."""
    global _SHARED
    if _SHARED is None:
        root = Path(tempfile.mkdtemp(prefix="opsroom-synapse-"))
        server = Synapse(root, python=synapse_python())
        server.start()
        atexit.register(shutil.rmtree, root, ignore_errors=True)  # runs after stop (atexit is LIFO)
        atexit.register(server.stop)
        for localpart in PEOPLE:
            server.register(localpart, admin=localpart == "admin")
        _SHARED = server
    elif not _SHARED.running:
        _SHARED.start()  # a test stopped it and failed before starting it again
    return _SHARED


@pytest.fixture(scope="session")
def synapse() -> Iterator[Synapse]:
    server = shared()
    yield server
    # Left running for other modules of the session; atexit stops it.

