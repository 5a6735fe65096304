"""The client CLI stays light: a remote command loads neither the store nor the catalog's models.

`opsroom --version` cost 2 s of CPU when the CLI imported the catalog service (and through it
SQLAlchemy and an argon2 hash made at import); every `opsroom status` from a laptop paid it.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sqlalchemy", "opsroom.store", "opsroom.catalog.schema", "opsroom.runtime", "argon2", "fastapi",
         "opsroom.config")


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_loads_nothing_heavy() -> None:
    loaded = _loaded_after("import opsroom.cli")
    assert "opsroom.cli.remote" in loaded  # the probe did import the CLI
    assert not [m for m in HEAVY if m in loaded]


def test_a_remote_command_loads_nothing_heavy() -> None:
    # `status` against a server that is not there: the whole command path up to "unreachable".
    code = ("import sys\nsys.argv = ['opsroom', '--server', 'http://127.0.0.1:9', '--token', 'x_y', 'status']\n"
            "from opsroom.cli import app\ntry:\n    app()\nexcept SystemExit as e:\n    assert e.code == 5, e.code")
    loaded = _loaded_after(code)
    assert not [m for m in HEAVY if m in loaded]
