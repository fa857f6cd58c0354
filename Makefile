# The two commands: `make run` (install and serve) and `make test` (install and test).
# Each creates .venv on first use from the hashed lock files in requirements/ (made by `make lock`),
# so two installs a month apart get the same audited versions; nothing else needs to be installed by hand.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
RUN_LOCK := requirements/run.lock
TEST_LOCK := requirements/test.lock

.PHONY: run test lint bench spec lock

# The lock pins every dependency with its hashes (--require-hashes); the project itself is installed
# editable on top, without resolving anything again (--no-deps). A pattern rule: $(VENV) and the
# benchmark's own venv are made alike.
%/.run-deps: pyproject.toml $(RUN_LOCK)
	$(PYTHON) -m venv $*
	$*/bin/python -m pip install -q --upgrade pip
	$*/bin/python -m pip install -q --require-hashes -r $(RUN_LOCK)
	$*/bin/python -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.test-deps: pyproject.toml $(TEST_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r $(TEST_LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	@echo "The CLI is $(VENV)/bin/mistral-sidecar (e.g. $(VENV)/bin/mistral-sidecar keys list), or run: source $(VENV)/bin/activate" >&2
	$(VENV)/bin/mistral-sidecar serve

test: $(VENV)/.test-deps
	bash scripts/services.sh
	$(VENV)/bin/pytest -n 2

lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff check sidecar tests scripts bench

spec: $(VENV)/.test-deps
	$(PY) scripts/sync_spec.py
	$(PY) scripts/make_contracts.py  # regenerates generated contracts; prints drift: contracts of vanished operations

# The benchmark runs from a venv of the run lock only, as the sidecar is installed to serve: the test lock
# adds packages that change what starts (pygments, which mako's import picks up: ~0.2 s of start-up and
# ~3 MB of worker RSS here).
BENCH_VENV ?= .venv-bench
bench: $(BENCH_VENV)/.run-deps
	$(BENCH_VENV)/bin/python bench/run.py

# Re-resolve both lock files from pyproject.toml (every extra) after changing a dependency or an extra,
# or to take newer releases; uv runs from a throwaway venv, so the locks never depend on .venv.
lock:
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install -q 'uv>=0.5' 'tomli>=2; python_version < "3.11"'
	$(VENV)-lock/bin/python scripts/lock.py --uv $(VENV)-lock/bin/uv
