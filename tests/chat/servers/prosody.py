"""A real prosody (Debian's) on loopback for the XMPP tests: VirtualHost localhost, the MUC
component conference.localhost (rooms non-anonymous, so occupants' real JIDs are visible, and
unlocked on creation), c2s on a free port with STARTTLS required and a self-signed certificate,
no s2s, no HTTP. Config, data, pid and log live in a temp dir of its own; the accounts are made
with prosodyctl against that config. It runs in the foreground (-F) as a child of the test
process; stop() and start() again reuse the port (the reconnect test) and the accounts.

One server per test session (`shared()`). Blocking on purpose, so it serves any event loop.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import tempfile
from pathlib import Path

from tests.chat.servers import ChildServer, self_signed, wait_for_port
from tests.factories import free_port

DOMAIN = "localhost"
MUC = f"conference.{DOMAIN}"
START_TIMEOUT_S = 20.0
# The accounts every XMPP test can use: `opsroom` is the bot, `otherbot` another bot.
PEOPLE = ("opsroom", "alice", "bob", "carol", "otherbot", "mallory")


def password(user: str) -> str:
    return f"{user}-xmpp-test-pw"


class Prosody(ChildServer):
    LOGS = ("stdout.log", "prosody.log")
    STOP_TIMEOUT_S = 10.0
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="opsroom-prosody-"))
        self.port = free_port()
        self.cert, self.key = self_signed(self.root / "tls", DOMAIN)
        (self.root / "data").mkdir(exist_ok=True)
        self.config = self.root / "prosody.cfg.lua"
        self.config.write_text(self._config())
        self.proc: subprocess.Popen[bytes] | None = None
        self._accounts_made = False

    def _config(self) -> str:
        return f"""\
-- written by tests/chat/servers/prosody.py for one test session
run_as_root = true
prosody_user = "root"
pidfile = "{self.root}/prosody.pid"
data_path = "{self.root}/data"
plugin_paths = {{}}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.port} }}
c2s_direct_tls_ports = {{}}
s2s_ports = {{}}
component_ports = {{}}
http_ports = {{}}
https_ports = {{}}
modules_enabled = {{ "disco"; "roster"; "saslauth"; "tls"; "ping"; "presence" }}
modules_disabled = {{ "s2s"; "posix"; "offline" }}
authentication = "internal_hashed"
c2s_require_encryption = true
ssl = {{ certificate = "{self.cert}"; key = "{self.key}" }}
certificates = "{self.root}/tls"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{self.root}/prosody.log" }} }}

VirtualHost "{DOMAIN}"

Component "{MUC}" "muc"
    restrict_room_creation = false
    muc_room_locking = false
    muc_room_default_public_jids = true
    muc_room_default_history_length = 50
"""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _ctl(self, *args: str) -> None:
        subprocess.run(["prosodyctl", "--config", str(self.config), *args], check=True, capture_output=True,
                       timeout=30, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        if self.running:
            return
        if not self._accounts_made:
            for user in PEOPLE:
                self._ctl("register", user, DOMAIN, password(user))
            self._accounts_made = True
        log = (self.root / "stdout.log").open("ab")
        self.proc = subprocess.Popen(["prosody", "--config", str(self.config), "-F"], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        wait_for_port(self.port, timeout=START_TIMEOUT_S, alive=self.proc)


_SHARED: dict[int, Prosody] = {}


def shared() -> Prosody:
    """The session's prosody (one per process), started; stopped when the process exits."""
    server = _SHARED.get(os.getpid())
    if server is None:
        server = _SHARED[os.getpid()] = Prosody()
        atexit.register(server.close)
    server.start()
    return server
