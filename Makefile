# Two commands: `make run` and `make test`. Both install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/dev.lock | sha1sum | cut -c1-12)
# One test process per core (tests/conftest.py keeps a module's tests in one); the slowest tests
# are listed at the end of every run: the suite has a 20-minute budget on 2 cores.
PYTEST_ARGS ?= -n auto --durations=25

.PHONY: run test install lint typecheck bench clean-var images lock

# The venv takes the exact, hash-checked versions of requirements/dev.lock (`make lock`
# regenerates it), then the project itself without resolving anything again.
$(STAMP): pyproject.toml requirements/dev.lock requirements/build.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements/build.lock -r requirements/dev.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install
	scripts/dev-services.sh
	$(BIN)/handin dev $(RUN_ARGS)

test: install
	scripts/test-services.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy core

# Every image in images/, built with podman (a stand-in Python base from Debian where no registry is reachable).
images:
	scripts/build-images.sh

# Regenerates the images' hash-pinned locks (requirements/*.lock) from pyproject.toml.
lock: install
	$(BIN)/python scripts/lock.py

# The benchmarks run the real services (PostgreSQL, Redis, clamd) the tests use.
bench: install
	scripts/test-services.sh
	$(BIN)/python -m bench

clean-var:
	rm -rf var
