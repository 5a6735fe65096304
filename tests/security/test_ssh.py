"""SSH attack classes against a real loopback sshd: argv injection through the remote shell, a
substituted host key (a machine in the middle), loose key files, jump cycles, leaked secrets."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from opsroom.catalog.errors import CatalogError
from opsroom.catalog.loader import load_catalog
from opsroom.catalog.schema import Host
from opsroom.ssh.keys import SshError
from opsroom.ssh.pool import SshPool
from tests import inprocess
from tests.ssh import sshd
from tests.ssh.helpers import PY, catalog, fingerprint, run, ssh_runbook

ARGV_TO_FILE = "import json,sys; open(sys.argv[1],'w').write(json.dumps(sys.argv[2:]))"
ENV_TO_FILE = "import json,os,sys; open(sys.argv[1],'w').write(json.dumps([os.environ.get('X'), os.getcwd()]))"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.Sshd]:
    with sshd.running(Path(tmp_path_factory.mktemp("sshd"))) as running:
        yield running


@pytest.fixture
async def pool(server: sshd.Sshd) -> AsyncIterator[SshPool]:
    table = {"box": Host(**server.host("box"))}
    p = SshPool(lambda: table)
    try:
        yield p
    finally:
        await p.close()


def _sink(_data: bytes) -> None:
    pass


# --- argv injection -------------------------------------------------------------

PAYLOADS = [
    "b; touch {pwn}",
    "$(touch {pwn})",
    "`touch {pwn}`",
    "a\ntouch {pwn}",
    "a' ; touch {pwn}; echo '",
    'a" ; touch {pwn}; echo "',
    "a && touch {pwn} || touch {pwn}",
    "a | touch {pwn}",
    "> {pwn}",
    "*",
    "~",
    "$HOME ${{PATH}}",
    "-rf",
    "--",
    "",
    "a\\ b\\",
    "\t \t",
    "é ü 日本",
]


class TestArgvInjection:
    @pytest.mark.parametrize("payload", PAYLOADS)
    async def test_each_argument_arrives_whole_and_nothing_else_runs(self, pool: SshPool, tmp_path: Path,
                                                                     payload: str) -> None:
        pwn = tmp_path / "pwned"
        value = payload.format(pwn=pwn)
        out = tmp_path / "argv.json"
        result = await pool.run("box", [PY, "-c", ARGV_TO_FILE, str(out), value, "next"], on_output=_sink)
        assert result.code == 0
        assert json.loads(out.read_text()) == [value, "next"]
        assert not pwn.exists()

    async def test_env_values_and_cwd_are_quoted_too(self, pool: SshPool, tmp_path: Path) -> None:
        pwn = tmp_path / "pwned"
        odd = tmp_path / f"a b; touch {pwn.name}"
        odd.mkdir()
        out = tmp_path / "env.json"
        value = f"$(touch {pwn}) `touch {pwn}`; touch {pwn}"
        result = await pool.run("box", [PY, "-c", ENV_TO_FILE, str(out)], env={"X": value}, cwd=str(odd),
                                on_output=_sink)
        assert result.code == 0
        assert json.loads(out.read_text()) == [value, str(odd)]
        assert not pwn.exists()

    @pytest.mark.parametrize("env", [{"A;touch /tmp/x": "1"}, {"A B": "1"}, {"$(id)": "1"}, {"": "1"}])
    async def test_environment_names_that_are_not_shell_names_are_refused(self, pool: SshPool,
                                                                           env: dict[str, str]) -> None:
        with pytest.raises(SshError, match="not a shell name"):
            await pool.run("box", ["true"], env=env, on_output=_sink)

    @pytest.mark.parametrize("argv", [["X=1", "sh"], ["true", "a\x00b"]])
    async def test_what_env_or_exec_would_misread_is_refused(self, pool: SshPool, argv: list[str]) -> None:
        with pytest.raises(SshError):
            await pool.run("box", argv, on_output=_sink)

    async def test_through_a_runbook_parameter(self, tmp_path: Path, server: sshd.Sshd) -> None:
        canary = tmp_path / "x"
        canary.mkdir()
        book = ssh_runbook("argv", [{"command": [PY, "-c", ARGV_TO_FILE, str(tmp_path / "a.json"),
                                                 "{{ params.text }}"]}], parameters={"text": {"type": "string"}})
        async with inprocess.booted(tmp_path, catalog(tmp_path, server, runbooks_=[book])) as (rt, _f):
            value = f"b; rm -rf {canary} $(rm -rf {canary}) `rm -rf {canary}`"
            done = await run(rt, "argv", text=value)
        assert done.status == "succeeded", done.error
        assert json.loads((tmp_path / "a.json").read_text()) == [value]
        assert canary.is_dir()


# --- host key substitution --------------------------------------------------------


class TestHostKeySubstitution:
    async def test_another_server_with_another_key_is_refused_before_anything_runs(
            self, server: sshd.Sshd, tmp_path: Path) -> None:
        # The catalog pins `server`'s key; the address now answers with a different sshd (same user,
        # same authorized client key): a machine in the middle.
        with sshd.running(tmp_path / "mitm") as mitm:
            mitm_keys = (mitm.dir / "authorized_keys")
            mitm_keys.write_text((server.dir / "authorized_keys").read_text())
            marker = tmp_path / "ran"
            for pin in (server.host_key, fingerprint(server.host_key)):
                table = {"box": Host(**{**server.host("box", host_key=pin), "port": mitm.port})}
                pool = SshPool(lambda t=table: t)  # type: ignore[misc]
                with pytest.raises(SshError) as err:
                    await pool.run("box", ["touch", str(marker)], on_output=_sink)
                await pool.close()
                assert fingerprint(server.host_key) in err.value.message  # expected
                assert fingerprint(mitm.host_key) in err.value.message  # presented
                assert "refused" in err.value.message
                assert not marker.exists()

    async def test_a_substituted_jump_host_is_refused_too(self, server: sshd.Sshd, tmp_path: Path) -> None:
        with sshd.running(tmp_path / "mitm") as mitm:
            table = {"jump": Host(**{**server.host("jump"), "port": mitm.port}),
                     "box": Host(**server.host("box", jump="jump"))}
            pool = SshPool(lambda: table)
            with pytest.raises(SshError) as err:
                await pool.run("box", ["true"], on_output=_sink)
            await pool.close()
        assert "host jump" in err.value.message and fingerprint(mitm.host_key) in err.value.message

    async def test_the_jump_host_tunnel_works_with_the_right_keys(self, server: sshd.Sshd) -> None:
        table = {"jump": Host(**server.host("jump")), "box": Host(**server.host("box", jump="jump"))}
        pool = SshPool(lambda: table)
        try:
            assert (await pool.run("box", ["true"], on_output=_sink)).code == 0
            assert pool.connects == 2
        finally:
            await pool.close()

    def test_a_host_key_line_with_a_host_name_in_front_is_refused_at_load(self, server: sshd.Sshd,
                                                                          tmp_path: Path) -> None:
        cat = catalog(tmp_path, server, hosts=[server.host("box", host_key=f"127.0.0.1 {server.host_key}")])
        with pytest.raises(CatalogError, match="starts with a host name"):
            load_catalog(cat)


# --- key file permissions -----------------------------------------------------------


class TestKeyFilePermissions:
    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
    def test_group_or_world_readable_key_files_are_refused_at_load(self, server: sshd.Sshd, tmp_path: Path,
                                                                   mode: int) -> None:
        key = tmp_path / "key"
        shutil.copy(server.client_key, key)
        key.chmod(mode)
        with pytest.raises(CatalogError) as err:
            load_catalog(catalog(tmp_path, server, hosts=[server.host("box", key_file=str(key))]))
        assert f"mode {mode:04o}" in str(err.value) and "chmod 600" in str(err.value)

    @pytest.mark.parametrize("mode", [0o600, 0o400])
    async def test_owner_only_key_files_are_used(self, server: sshd.Sshd, tmp_path: Path, mode: int) -> None:
        key = tmp_path / "key"
        shutil.copy(server.client_key, key)
        key.chmod(mode)
        load_catalog(catalog(tmp_path, server, hosts=[server.host("box", key_file=str(key))]))
        table = {"box": Host(**server.host("box", key_file=str(key)))}
        pool = SshPool(lambda: table)
        try:
            assert (await pool.run("box", ["true"], on_output=_sink)).code == 0
        finally:
            await pool.close()

    def test_a_missing_key_file_is_refused_at_load(self, server: sshd.Sshd, tmp_path: Path) -> None:
        with pytest.raises(CatalogError, match="does not exist"):
            load_catalog(catalog(tmp_path, server, hosts=[server.host("box", key_file=str(tmp_path / "nope"))]))


# --- jump host cycles ----------------------------------------------------------------


class TestJumpCycles:
    @pytest.mark.parametrize("jumps", [{"a": "b", "b": "a"}, {"a": "a"}, {"a": "b", "b": "c", "c": "a"}])
    def test_a_jump_cycle_is_refused_at_load(self, server: sshd.Sshd, tmp_path: Path,
                                             jumps: dict[str, str]) -> None:
        hosts = [server.host(n, jump=j) for n, j in jumps.items()]
        with pytest.raises(CatalogError) as err:
            load_catalog(catalog(tmp_path, server, hosts=hosts))
        assert "jump through each other in a cycle" in str(err.value)
        assert "catalog.yaml:" in str(err.value)

    def test_a_missing_jump_host_is_refused_at_load(self, server: sshd.Sshd, tmp_path: Path) -> None:
        with pytest.raises(CatalogError, match="jumps through host 'bastion', which is not in the catalog"):
            load_catalog(catalog(tmp_path, server, hosts=[server.host("box", jump="bastion")]))

    def test_runbook_and_check_references_to_hosts_are_checked(self, server: sshd.Sshd, tmp_path: Path) -> None:
        books = [ssh_runbook("a", [{"command": ["true"]}], hosts=["nope"]),
                 {**ssh_runbook("b", [{"command": ["true"]}], group="nogroup"), "hosts": []},
                 ssh_runbook("c", [{"command": ["true"]}], hosts=["{{ params.h }}"],
                             parameters={"h": {"type": "string"}})]
        checks = [{"name": "p", "type": "process", "service": "svc", "process_name": "x", "via": "ghost"}]
        with pytest.raises(CatalogError) as err:
            load_catalog(catalog(tmp_path, server, runbooks_=books, checks=checks))
        text = str(err.value)
        assert "runs on host 'nope'" in text and "group 'nogroup'" in text and "runs via host 'ghost'" in text
        assert "params.h" not in text  # a templated host is judged when it runs


# --- secrets -------------------------------------------------------------------------


class TestSecrets:
    @pytest.fixture
    def encrypted(self, server: sshd.Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
        passphrase = "pass-Phrase-9f3a1c"
        # PKCS#8: an encrypted OpenSSH-format key needs bcrypt, which is not installed (see docs/ssh.md).
        key, pub = sshd.keygen(tmp_path / "enc_key", passphrase=passphrase, kind="ecdsa", fmt="PKCS8")
        with open(server.dir / "authorized_keys", "a") as fh:
            fh.write(pub + "\n")
        text = key.read_text()
        monkeypatch.setenv("SSH_KEY_TEXT", text)
        monkeypatch.setenv("SSH_PASS", passphrase)
        return {"key": text, "passphrase": passphrase}

    def _host(self, server: sshd.Sshd, passphrase: str = "${secret:SSH_PASS}") -> dict[str, Any]:
        host = server.host("box", key="${secret:SSH_KEY_TEXT}", passphrase=passphrase)
        del host["key_file"]
        return host

    @staticmethod
    def _leaks(text: str, secrets: dict[str, str]) -> list[str]:
        body = secrets["key"].splitlines()[1]  # a line of the key's base64 body
        return [name for name, value in (("passphrase", secrets["passphrase"]), ("key", body)) if value in text]

    async def test_key_from_a_secret_works_and_an_echoed_secret_is_masked(
            self, server: sshd.Sshd, tmp_path: Path, encrypted: dict[str, str],
            capsys: pytest.CaptureFixture[str]) -> None:
        book = ssh_runbook("echo", [{"command": ["sh", "-c", 'echo "pass=$1"; echo "$2" | head -3',
                                                 "sh", "${secret:SSH_PASS}", "${secret:SSH_KEY_TEXT}"]}])
        async with inprocess.booted(tmp_path, catalog(tmp_path, server, hosts=[self._host(server)],
                                                      runbooks_=[book])) as (rt, _f):
            done = await run(rt, "echo")
        assert done.status == "succeeded", done.error
        assert "pass=****" in done.output
        assert self._leaks(done.output, encrypted) == [], done.output
        assert self._leaks(capsys.readouterr().out, encrypted) == []

    async def test_a_wrong_passphrase_fails_without_quoting_either_secret(
            self, server: sshd.Sshd, tmp_path: Path, encrypted: dict[str, str],
            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            caplog: pytest.LogCaptureFixture) -> None:
        monkeypatch.setenv("SSH_PASS_WRONG", "wrong-Phrase-77x")
        host = self._host(server, passphrase="${secret:SSH_PASS_WRONG}")
        book = ssh_runbook("noop", [{"command": ["true"]}])
        async with inprocess.booted(tmp_path, catalog(tmp_path, server, hosts=[host], runbooks_=[book])) as (rt, _f):
            done = await run(rt, "noop")
        assert done.status == "failed"
        assert "cannot decrypt it: the passphrase is wrong" in (done.error or "")
        seen = (done.error or "") + done.output + capsys.readouterr().out + caplog.text
        assert self._leaks(seen, encrypted) == []
        assert "wrong-Phrase-77x" not in seen

    async def test_a_refused_host_key_error_quotes_no_secret(self, server: sshd.Sshd, tmp_path: Path,
                                                             encrypted: dict[str, str],
                                                             capsys: pytest.CaptureFixture[str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
        _, other = sshd.keygen(tmp_path / "other")
        host = {**self._host(server), "host_key": other}
        book = ssh_runbook("noop", [{"command": ["true"]}])
        async with inprocess.booted(tmp_path, catalog(tmp_path, server, hosts=[host], runbooks_=[book])) as (rt, _f):
            done = await run(rt, "noop")
        assert done.status == "failed" and "refused" in (done.error or "")
        seen = (done.error or "") + done.output + capsys.readouterr().out + caplog.text
        assert self._leaks(seen, encrypted) == []
