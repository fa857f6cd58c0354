# The two commands: `make run` (install and serve) and `make test` (install and test).
# Each creates .venv on first use; nothing else needs to be installed by hand.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: run test lint bench spec

$(VENV)/.run-deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[postgres,redis]'
	touch $@

$(VENV)/.test-deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(VENV)/bin/mistral-sidecar serve

test: $(VENV)/.test-deps
	bash scripts/services.sh
	$(VENV)/bin/pytest -n 2

lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff check sidecar tests scripts bench

spec: $(VENV)/.test-deps
	$(PY) scripts/sync_spec.py
	$(PY) scripts/make_contracts.py  # regenerates generated contracts; prints drift: contracts of vanished operations

bench: $(VENV)/.run-deps
	$(PY) bench/run.py
