# The two set-up commands from the README: `make demo` and `make test`.
# Everything they need is installed here, so both work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit integration e2e bench cluster-up cluster-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# Builds (or reuses from ~/.cache/memcached-operator) the control-plane binaries.
build: $(STAMP)
	$(PY) -m deploy.local.build

demo: build
	$(VENV)/bin/memcached-operator demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: build lint
	$(VENV)/bin/pytest -ra

unit: $(STAMP)
	$(VENV)/bin/pytest -m unit

bench: build
	$(PY) -m bench.run

cluster-up: build
	$(VENV)/bin/memcached-operator cluster up

cluster-down: $(STAMP)
	$(VENV)/bin/memcached-operator cluster down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
