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
	$(PY) -m deploy.local demo

# mypy reads the import package memcached_operator through a tree of links in .build/mypy (it
# cannot follow setuptools' editable-install finder that maps services/ and shared/ into it).
MYPY_VIEW := .build/mypy/memcached_operator
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf .build/mypy && mkdir -p $(MYPY_VIEW)
	for entry in services/*; do ln -s ../../../$$entry $(MYPY_VIEW)/; done
	ln -s ../../../shared $(MYPY_VIEW)/shared
	$(VENV)/bin/mypy

test: build lint
	$(VENV)/bin/pytest -ra

unit: $(STAMP)
	$(VENV)/bin/pytest -m unit

bench: build
	$(PY) -m bench.run

cluster-up: build
	$(PY) -m deploy.local cluster up

cluster-down: $(STAMP)
	$(PY) -m deploy.local cluster down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
