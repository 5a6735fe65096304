# The two commands: `make demo` and `make test`. Both bootstrap what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint bench system-deps synapse oidc-provider venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests use: chromium for the browser test (never `playwright install`),
# ngircd and prosody as the real IRC and XMPP servers the chat tests start on loopback,
# prometheus-alertmanager as the real sender of alerts and receiver of silences, openssh-server
# as the real remote host of ssh runbooks and checks, monitoring-plugins as real Nagios plugins,
# curl because the tutorial (docs/tutorial.md, run by tests/e2e/test_tutorial.py) uses it.
DEBS := chromium ngircd prosody prometheus-alertmanager openssh-server openssh-client monitoring-plugins curl aide
system-deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: $(STAMP)
	$(VENV)/bin/opsroom demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# Synapse (the real Matrix homeserver of the chat tests) from PyPI, into a cache outside the
# checkout: only the first run on a machine pays for it.
synapse:
	@bash scripts/install-synapse >/dev/null

# oidc-provider (the real OpenID Connect provider of the single sign-on tests) from npm, run with
# the machine's Node.js, into the same cache outside the checkout.
oidc-provider:
	@bash scripts/install-oidc-provider >/dev/null

# Four workers on two cores: most tests wait on servers, browsers and subprocesses, not on the CPU
# (2,339 tests: 14 min 40 s on 4 workers on a loaded machine). A file stays on one worker, so its
# module fixtures (one server per file) are started once. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 4
test: $(STAMP) system-deps synapse oidc-provider lint
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	@set -e; for f in bench/[!_]*.py; do echo "== $$f"; $(PY) $$f --quick; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
