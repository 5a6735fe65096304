"""Keys for SSH: the pinned host key (a public key line or a SHA256 fingerprint) and the client key.

A host key is never learned: what the catalog pins is the only key accepted. A client key file
must be readable by its owner only (as OpenSSH's own client insists), and no error here ever
quotes a private key or its passphrase.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import asyncssh

from opsroom.catalog.schema import Host


class SshError(Exception):
    """A refusal or failure with a message fit for the room: what, which host, how to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class PinnedKey:
    """What `host_key` pins: a whole public key (and so its algorithm), or only a fingerprint."""

    fingerprint: str  # SHA256:...
    key: asyncssh.SSHKey | None  # None when only a fingerprint was given

    def matches(self, presented: asyncssh.SSHKey) -> bool:
        return fingerprint(presented) == self.fingerprint


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


def parse_host_key(text: str) -> PinnedKey:
    """`ssh-ed25519 AAAA... [comment]` or `SHA256:...`; ValueError says how to write it otherwise."""
    text = text.strip()
    if text.startswith("SHA256:"):
        body = text.removeprefix("SHA256:")
        if not body or any(c.isspace() for c in body) or len(body) < 20:
            raise ValueError(f"{text!r} is not a SHA256 fingerprint (`ssh-keygen -lf` prints `SHA256:` and "
                             "43 characters)")
        return PinnedKey(text.rstrip("="), None)
    words = text.split()
    if len(words) >= 3 and not _looks_like_algorithm(words[0]) and _looks_like_algorithm(words[1]):
        raise ValueError(f"host_key starts with a host name ({words[0]!r}): write only the key type and key, "
                         f"`{words[1]} {words[2][:12]}...`, without the name ssh-keyscan puts in front")
    try:
        key = asyncssh.import_public_key(" ".join(words[:2]))
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError(f"host_key is not a public key line ({exc}); write it as known_hosts does, "
                         "e.g. `ssh-ed25519 AAAAC3Nz...`, or give its `SHA256:...` fingerprint") from None
    return PinnedKey(fingerprint(key), key)


def _looks_like_algorithm(word: str) -> bool:
    return word.startswith(("ssh-", "ecdsa-", "sk-", "rsa-"))


def key_file_problem(path: str) -> str | None:
    """Why a private key file may not be used (missing, not a file, readable by others), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"key_file {path} does not exist"
    except OSError as exc:
        return f"cannot read key_file {path}: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"key_file {path} is not a regular file"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (f"key_file {path} has mode {mode:04o}: others can read the private key; "
                f"run `chmod 600 {path}` (0600 or stricter is required)")
    return None


def mask_key_lines(key_text: str) -> None:
    """Register each line of a private key's body with the masker, not only the whole text: a
    step that prints part of it (`head`, a tool's error) would otherwise show those lines."""
    from opsroom.secrets import masking

    masking.register(*(line.strip() for line in key_text.splitlines()
                       if len(line.strip()) >= 16 and not line.startswith("-----")))


def client_key(host: Host) -> asyncssh.SSHKey:
    """The host's private key from `key` (a secret) or `key_file` (0600), decrypted with `passphrase`."""
    passphrase = host.passphrase or None
    try:
        if host.key is not None:
            return asyncssh.import_private_key(host.key, passphrase)
        assert host.key_file is not None
        problem = key_file_problem(host.key_file)
        if problem is not None:
            raise SshError(f"host {host.name}: {problem}")
        with open(host.key_file, "rb") as fh:
            return asyncssh.import_private_key(fh.read(), passphrase)
    except (asyncssh.KeyEncryptionError, asyncssh.KeyImportError) as exc:
        # asyncssh's own words are kept only where they cannot hold key material or the passphrase.
        reason = str(exc)
        if "bcrypt" in reason:
            problem = ("it is an encrypted OpenSSH key, which needs the bcrypt package "
                       "(`pip install 'asyncssh[bcrypt]'`), or convert it: `ssh-keygen -p -m PKCS8 -f FILE`")
        elif "decrypt" in reason.lower() or isinstance(exc, asyncssh.KeyEncryptionError):
            problem = ("cannot decrypt it: the passphrase is wrong" if passphrase
                       else "it is encrypted: set passphrase: ${secret:NAME}")
        else:
            problem = "it is not a private key asyncssh can read (OpenSSH, PKCS#8 or PEM format)"
        where = f"key_file {host.key_file}" if host.key_file else "key (from its secret)"
        raise SshError(f"host {host.name}: {where}: {problem}") from None
    except OSError as exc:
        raise SshError(f"host {host.name}: cannot read key_file {host.key_file}: {exc.strerror or exc}") from None
