"""Signed checkpoints: (log name, size, head hash, time) signed with Ed25519, kept off the database.

The chain shows an edit, an insertion or a removal in the middle; only something outside the
store remembers how long the log was and what its head was. A checkpoint is that memory:
written to a directory (one file per checkpoint, never overwritten; committed when the
directory is a git work tree) and sent to syslog (RFC 5424), so cutting the tail or rewriting
the whole chain consistently leaves a signed statement that no longer matches.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import logging.handlers
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opsroom.audit import jcs
from opsroom.audit.keys import key_id

PURPOSE = "opsroom audit checkpoint"  # signed too: a signature made for anything else is no checkpoint
MAX_SIZE = 2**62  # no log reaches it; a bigger size is garbage, named as such
MAX_FILE = 64 * 1024  # a checkpoint is a few hundred bytes


@dataclass(frozen=True)
class Checkpoint:
    log: str
    size: int
    head: str
    at: float
    key: str  # key_id() of the signing key
    sig: str = ""  # base64 Ed25519 signature over signed_bytes()

    def signed_bytes(self) -> bytes:
        return jcs.canonical({"purpose": PURPOSE, "log": self.log, "size": self.size, "head": self.head,
                              "at": self.at, "key": self.key})

    def to_json(self) -> str:
        return jcs.dumps({"log": self.log, "size": self.size, "head": self.head, "at": self.at, "key": self.key,
                          "sig": self.sig}) + "\n"

    def file_name(self) -> str:
        """Time first, so names sort in the order they were made; the size says what they cover."""
        stamp = dt.datetime.fromtimestamp(self.at, dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return f"{stamp}-{self.size:012d}.json"


class BadCheckpoint(ValueError):
    """A checkpoint file that is not a well-formed checkpoint (named by the caller)."""


def sign(key: Ed25519PrivateKey, *, log: str, size: int, head: str, at: float) -> Checkpoint:
    unsigned = Checkpoint(log=log, size=size, head=head, at=round(at, 6), key=key_id(key.public_key()))
    sig = base64.b64encode(key.sign(unsigned.signed_bytes())).decode()
    return Checkpoint(log=unsigned.log, size=size, head=head, at=unsigned.at, key=unsigned.key, sig=sig)


def signature_ok(cp: Checkpoint, public: Ed25519PublicKey) -> bool:
    try:
        public.verify(base64.b64decode(cp.sig, validate=True), cp.signed_bytes())
    except (InvalidSignature, ValueError):
        return False
    return True


def parse(text: str) -> Checkpoint:
    """A checkpoint from its file; BadCheckpoint for anything else (garbage, wrong types, a size no
    log has), so a planted file is named rather than trusted or crashing verify."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise BadCheckpoint(f"not JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise BadCheckpoint("not a JSON object")
    want: dict[str, type | tuple[type, ...]] = {"log": str, "size": int, "head": str, "at": (int, float),
                                                "key": str, "sig": str}
    for name, kind in want.items():
        value = obj.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadCheckpoint(f"field {name!r} missing or of the wrong type")
    if not 0 <= obj["size"] <= MAX_SIZE:
        raise BadCheckpoint(f"size {str(obj['size'])[:24]} is out of range")
    if len(obj["head"]) != 64 or len(obj["sig"]) > 200 or len(obj["log"]) > 200:
        raise BadCheckpoint("head, sig or log malformed")
    return Checkpoint(log=obj["log"], size=obj["size"], head=obj["head"], at=float(obj["at"]), key=obj["key"],
                      sig=obj["sig"])


def load_dir(directory: Path) -> list[tuple[str, Checkpoint | BadCheckpoint]]:
    """Every *.json in `directory` by name (that is, by time): the checkpoint, or why it is none."""
    out: list[tuple[str, Checkpoint | BadCheckpoint]] = []
    for path in sorted(directory.glob("*.json")):
        try:
            if not path.is_file() or path.stat().st_size > MAX_FILE:
                raise BadCheckpoint(f"not a regular file of at most {MAX_FILE} bytes")
            cp = parse(path.read_text(encoding="utf-8", errors="strict"))
            if path.name != cp.file_name():
                # A file's name is fixed when it is written: another checkpoint's content under it
                # (an older valid one put back in place of a newer one) is a rollback.
                raise BadCheckpoint(f"its content (size {cp.size}, made {cp.file_name()[:24]}) does not "
                                    "match its name: replaced by another checkpoint")
            out.append((path.name, cp))
        except (BadCheckpoint, UnicodeDecodeError, OSError) as exc:
            out.append((path.name, exc if isinstance(exc, BadCheckpoint) else BadCheckpoint(str(exc))))
    return out


# --- where checkpoints go -------------------------------------------------


def write_dir(directory: Path, cp: Checkpoint) -> Path:
    """Write one checkpoint file, never replacing one: written aside, fsynced, then linked to its name
    (link fails if the name exists, where rename would overwrite)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / cp.file_name()
    tmp = directory / f".{cp.file_name()}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(cp.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


_GIT_ENV = {"GIT_AUTHOR_NAME": "opsroom", "GIT_AUTHOR_EMAIL": "opsroom@localhost",
            "GIT_COMMITTER_NAME": "opsroom", "GIT_COMMITTER_EMAIL": "opsroom@localhost"}
# What git is given of the server's environment: never the rest of it (OPSROOM_SECRET_KEY, the
# store's URL with its password, OIDC client secrets are all there).
_GIT_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


def git_env() -> dict[str, str]:
    return {**{k: os.environ[k] for k in _GIT_KEPT if k in os.environ}, **_GIT_ENV}


def is_git_work_tree(directory: Path) -> bool:
    """The directory itself is the top of a git work tree (one inside some other repository, a data
    dir under a checkout, is not taken for one)."""
    if not (directory / ".git").exists():
        return False
    try:
        done = subprocess.run(["git", "-C", str(directory), "rev-parse", "--show-toplevel"],
                              env=git_env(), capture_output=True, text=True, timeout=30, check=False)
    except OSError:  # no git installed: a plain directory
        return False
    return done.returncode == 0 and Path(done.stdout.strip()).resolve() == directory.resolve()


def git_removed(directory: Path) -> list[str]:
    """Checkpoint files the git history of `directory` added that are no longer there: the newest
    ones deleted to roll the log back past them. Empty when it is not a git work tree."""
    if not is_git_work_tree(directory):
        return []
    done = subprocess.run(["git", "-C", str(directory), "log", "--diff-filter=A", "--name-only", "--format=",
                           "--relative", "--", "."], env=git_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    added = {line.strip() for line in done.stdout.splitlines() if line.strip().endswith(".json")}
    return sorted(name for name in added if "/" not in name and not (directory / name).exists())


def git_commit(directory: Path, path: Path, cp: Checkpoint) -> None:
    """Commit the one new file (argv lists only: a file name never reaches a shell)."""
    env = git_env()
    name = str(path.relative_to(directory))
    for argv in (["git", "-C", str(directory), "add", "--", name],
                 ["git", "-C", str(directory), "commit", "--quiet", "--no-verify", "--no-gpg-sign",
                  "-m", f"audit checkpoint {cp.log} size {cp.size}", "--", name]):
        subprocess.run(argv, env=env, capture_output=True, timeout=60, check=True)


def syslog_line(cp: Checkpoint, *, hostname: str | None = None) -> str:
    """The RFC 5424 message after its <PRI>: VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG."""
    stamp = dt.datetime.fromtimestamp(cp.at, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    host = (hostname or socket.gethostname() or "-").split(".")[0][:255] or "-"
    return f"1 {stamp} {host} opsroom {os.getpid()} audit-checkpoint - {cp.to_json().strip()}"


class _Handler(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        raise  # a checkpoint that did not leave is the caller's to report, not stderr's


def syslog_handler(target: str) -> logging.handlers.SysLogHandler:
    """udp://host:port, tcp://host:port, or a Unix socket path (/dev/log)."""
    url = urlsplit(target)
    if url.scheme in ("udp", "tcp"):
        kind = socket.SOCK_DGRAM if url.scheme == "udp" else socket.SOCK_STREAM
        handler = _Handler(address=(url.hostname or "127.0.0.1", url.port or 514),
                                                 facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV,
                                                 socktype=kind)
    else:
        handler = _Handler(address=url.path or target,
                                                 facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV)
    handler.append_nul = False  # RFC 5424 frames carry no NUL
    return handler


def send_syslog(target: str, cp: Checkpoint) -> None:
    handler = syslog_handler(target)
    try:
        record = logging.LogRecord("opsroom.audit", logging.WARNING, __file__, 0, syslog_line(cp), None, None)
        handler.emit(record)  # <PRI> is added by the handler: authpriv.warning
    finally:
        handler.close()
