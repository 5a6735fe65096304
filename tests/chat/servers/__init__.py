"""Real chat servers the tests start on loopback (Synapse, ngircd, prosody), and what they share
with the other real servers of the suite (Alertmanager): a self-signed certificate for TLS
listeners, a bounded wait for a port to accept, and stopping and cleaning up a child server."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import ClassVar


def self_signed(directory: Path, host: str = "localhost") -> tuple[Path, Path]:
    """(cert, key) PEM files for `host` and 127.0.0.1, valid for a day. The cert is its own CA,
    so a client given it as its CA file verifies the server for real (no verify=False)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host), x509.DNSName(f"*.{host}"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{host}.crt", directory / f"{host}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def wait_for_port(port: int, *, timeout: float, alive: object = None, host: str = "127.0.0.1") -> None:
    """Block until host:port accepts a connection, or fail after `timeout`. `alive`, a
    subprocess.Popen, stops the wait early when the server exits instead of listening."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if alive is not None and alive.poll() is not None:  # type: ignore[attr-defined]
            raise RuntimeError(f"the server on port {port} exited with {alive.returncode}")  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.02)


class ChildServer:
    """A server run as a child process in a temp root of its own: stopped with TERM (then KILL),
    its root removed on close, the tail of its log files read for a failing test's message."""

    LOGS: ClassVar[tuple[str, ...]] = ()  # file names under root, read by log()
    STOP_TIMEOUT_S: ClassVar[float] = 5.0
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        out = ""
        for name in self.LOGS:
            path = self.root / name
            if path.exists():
                out += path.read_text(errors="replace")[-4000:]
        return out
