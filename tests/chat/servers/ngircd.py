"""A real ngircd (Debian's) on loopback for the IRC tests: a plain port and a TLS port with a
self-signed certificate, its config, pid and MOTD in a temp dir of its own (never /etc, never
the system service), in the foreground (-n) as a child of the test process.

ngircd started as root drops to `nobody`, so its dir is world-readable and the pid file's dir
world-writable. ngircd 26 has no SASL (its CAP knows only multi-prefix): the adapter's SASL
PLAIN is tested against a loopback stub in tests/chat/test_irc.py.

One server per test session (`shared()`); stop() and start() again on the same ports (the
reconnect test). Everything here blocks, so it serves any event loop; it starts in ~50 ms.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import tempfile
from pathlib import Path

from tests.chat.servers import ChildServer, self_signed, wait_for_port
from tests.factories import free_port

START_TIMEOUT_S = 10.0
SERVER_NAME = "irc.opsroom.test"


class Ngircd(ChildServer):
    LOGS = ("ngircd.log",)
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="opsroom-ngircd-"))
        self.root.chmod(0o755)
        self.port, self.tls_port = free_port(), free_port()
        self.cert, self.key = self_signed(self.root / "tls", "localhost")
        for path in (self.root / "tls", self.cert, self.key):
            path.chmod(0o755 if path.is_dir() else 0o644)
        run = self.root / "run"
        run.mkdir(exist_ok=True)
        run.chmod(0o777)
        self.config = self.root / "ngircd.conf"
        self.config.write_text(self._config())
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        return f"""\
[Global]
Name = {SERVER_NAME}
Info = opsroom test server
AdminInfo1 = opsroom tests
AdminEMail = nobody@localhost
Listen = 127.0.0.1
Ports = {self.port}
PidFile = {self.root}/run/ngircd.pid
MotdPhrase = "opsroom test server"
[Limits]
MaxNickLength = 30
MaxConnectionsIP = 0
PingTimeout = 120
PongTimeout = 20
[Options]
DNS = no
Ident = no
PAM = no
[SSL]
CertFile = {self.cert}
KeyFile = {self.key}
Ports = {self.tls_port}
"""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        log = (self.root / "ngircd.log").open("ab")
        self.proc = subprocess.Popen(["ngircd", "-n", "-f", str(self.config)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        wait_for_port(self.port, timeout=START_TIMEOUT_S, alive=self.proc)
        wait_for_port(self.tls_port, timeout=START_TIMEOUT_S, alive=self.proc)


_SHARED: dict[int, Ngircd] = {}


def shared() -> Ngircd:
    """The session's ngircd (one per process), started; stopped when the process exits."""
    server = _SHARED.get(os.getpid())
    if server is None:
        server = _SHARED[os.getpid()] = Ngircd()
        atexit.register(server.close)
    server.start()
    return server
