"""A real OpenSSH sshd on loopback for tests and the benchmark: key-only, its own config and keys.

The system's sshd service is never touched: this one is a child process on a free port, with
its host key, authorized_keys, config and pid file in a temp directory. It logs in as the
current user (root here): `PermitRootLogin prohibit-password` keeps that key-only, and
`StrictModes no` because the temp files are owned by the test, not a home directory's owner.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and insists on an absolute path
KEYGEN = "/usr/bin/ssh-keygen"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def keygen(path: Path, *, passphrase: str = "", kind: str = "ed25519", fmt: str | None = None) -> tuple[Path, str]:
    """A new key pair at `path` (mode 0600); returns the path and the public key line."""
    extra = ["-m", fmt] if fmt else []
    subprocess.run([KEYGEN, "-q", "-t", kind, *extra, "-N", passphrase, "-C", "", "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL)
    path.chmod(0o600)
    return path, Path(f"{path}.pub").read_text().strip()


@dataclass
class Sshd:
    """One running sshd: where it listens, its pinned host key and a client key it accepts."""

    dir: Path
    port: int
    host_key: str  # `ssh-ed25519 AAAA...` (the public half of the host key)
    client_key: Path  # the private key file, 0600
    user: str
    proc: subprocess.Popen[bytes]

    def host(self, name: str, **extra: Any) -> dict[str, Any]:
        """A catalog `hosts:` entry reaching this sshd."""
        return {"name": name, "address": "127.0.0.1", "port": self.port, "user": self.user,
                "host_key": self.host_key, "key_file": str(self.client_key), **extra}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _ready(port: int, proc: subprocess.Popen[bytes], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with code {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                banner = s.recv(64)
                if banner.startswith(b"SSH-2.0-"):
                    return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within {within:g}s")


def start(tmp: Path, *, max_sessions: int = 64) -> Sshd:
    """Start sshd in `tmp` (created); stop it with .stop()."""
    tmp.mkdir(parents=True, exist_ok=True)
    # sshd refuses to start without its privilege separation directory (normally made by the
    # service's unit, which we do not use).
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_key, host_pub = keygen(tmp / "host_ed25519")
    client_key, client_pub = keygen(tmp / "client_ed25519")
    (tmp / "authorized_keys").write_text(client_pub + "\n")
    port = _free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    # MaxStartups/MaxSessions: the fan-out benchmark opens 50 connections at once.
    (tmp / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {tmp / 'sshd.pid'}
AuthorizedKeysFile {tmp / 'authorized_keys'}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PermitUserEnvironment no
AllowTcpForwarding yes
MaxStartups 200:30:400
MaxSessions {max_sessions}
PerSourceMaxStartups none
LogLevel ERROR
""")
    log = open(tmp / "sshd.log", "ab")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        _ready(port, proc)
    except Exception:
        with contextlib.suppress(Exception):
            proc.kill()
            proc.wait(5)
        raise
    return Sshd(tmp, port, host_pub, client_key, user, proc)


@contextlib.contextmanager
def running(tmp: Path, **kwargs: Any) -> Iterator[Sshd]:
    server = start(tmp, **kwargs)
    try:
        yield server
    finally:
        server.stop()
