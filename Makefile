# carnet — `make demo` serves a seeded synthetic hospital; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test install lint typecheck architecture services chromium ha-tools ha js-clients bench clean

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	CARNET_ENV=demo $(BIN)/carnet demo

lint: install
	$(BIN)/ruff check carnet tests benchmarks
	$(BIN)/ruff format --check carnet tests benchmarks

typecheck: install
	$(BIN)/mypy

architecture: install
	$(BIN)/lint-imports

services:
	bash scripts/ensure-services

chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# Patroni and etcd (Debian's) for the failover test and `make ha`; pgBackRest-free backups use
# PostgreSQL's own pg_basebackup, already installed with the server.
ha-tools:
	@(command -v patroni && command -v etcd) >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patroni etcd-server >/dev/null)

# A leader and a synchronous standby under Patroni, on loopback ports (demo/test only): Ctrl-C stops it.
ha: install ha-tools
	$(BIN)/python -m carnet.operations.ha --directory $(CURDIR)/var/ha

# The JavaScript FHIR clients the tests drive the API with (npm, pinned by the lock file).
js-clients:
	@test -d var/node/node_modules/fhir-kit-client || (mkdir -p var/node \
		&& cp tests/fhir/js/package.json tests/fhir/js/package-lock.json var/node/ \
		&& cd var/node && npm ci --no-audit --no-fund --silent) \
		|| echo "js-clients: npm could not install them; tests/fhir/test_search_js.py says so and skips"

test: install services chromium ha-tools js-clients lint typecheck architecture
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

bench: install services
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
