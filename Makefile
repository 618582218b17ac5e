# Two commands for a newcomer: `make run` and `make test`. Everything installs into .venv
# from the committed, hash-pinned lock files (regenerate them with `make lock`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint lock clean

run: $(VENV)/.runtime
	$(BIN)/livepost serve

test: $(VENV)/.dev
	$(BIN)/ruff check app tests alembic bench
	$(BIN)/mypy app bench
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check app tests alembic bench
	$(BIN)/mypy app bench

$(VENV)/bin/pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"

$(VENV)/.runtime: requirements.lock pyproject.toml | $(VENV)/bin/pip
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: requirements-dev.lock pyproject.toml | $(VENV)/bin/pip
	$(BIN)/pip install -q --require-hashes -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@ $(VENV)/.runtime

lock:
	$(PYTHON) -m venv .lockvenv && .lockvenv/bin/pip install -q uv
	.lockvenv/bin/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes -o requirements.lock
	.lockvenv/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes -o requirements-dev.lock
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) livepost.db livepost.db-* .livepost-secret
