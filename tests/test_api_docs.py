"""docs/api.md keeps up with the API: every /api/v1 operation is shown there (an example or its path)."""

from __future__ import annotations

import re
from pathlib import Path

from opsroom.config import Settings
from opsroom.web.app import create_app

DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_every_api_path_is_in_docs_api_md(tmp_path: Path) -> None:
    text = DOCS.read_text()
    paths = create_app(Settings(data=tmp_path / "data", catalog=tmp_path / "catalog")).openapi()["paths"]
    missing = []
    for path in paths:
        # `{name}` stands for any one segment: an example (`/systems/shop/health`) shows the path.
        pattern = re.escape(path.removeprefix("/api/v1")).replace(r"\{", "{").replace(r"\}", "}")
        pattern = re.sub(r"\{[^}]+\}", r"[^/\\s?\"]+", pattern) + r"(?![\w/-])"
        if not re.search(pattern, text):
            missing.append(path)
    assert not missing, f"docs/api.md does not show {missing}"
