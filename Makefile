# The README's commands. Each sets up what it needs (a virtual environment in .venv) first:
# `make demo` installs corral with its runtime dependencies only; `make test` adds the dev
# extras (test tools, type checker, the SDKs the adapters are tested against) and checks the
# architecture's import contracts (pyproject.toml, docs/architecture.md) before the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP     := $(VENV)/.installed-dev

# Installing into the new environment with the interpreter's own pip (`pip --python`, pip
# 22.3 and later) saves bootstrapping a second pip into .venv, the slowest step of a fresh
# set-up; without a usable outer pip, .venv gets its own.
define install
	@if $(PYTHON) -m pip --python $(BIN)/python --version >/dev/null 2>&1; then \
	  $(PYTHON) -m pip --python $(BIN)/python install --quiet --disable-pip-version-check \
	    --no-compile $(1); \
	else \
	  [ -x $(BIN)/pip ] || $(BIN)/python -m ensurepip --upgrade >/dev/null; \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check $(1); \
	fi
endef

.PHONY: demo test lint bench openapi clean

$(BIN)/python:
	$(PYTHON) -m venv --without-pip $(VENV)

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(call install,-e .)
	touch $(RUNTIME_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(call install,-e '.[dev]')
	touch $(RUNTIME_STAMP) $(DEV_STAMP)

demo: $(RUNTIME_STAMP)
	$(BIN)/corral demo

# The suite runs in two worker processes (pytest-xdist, a test file per worker: about half
# the time of one process on two cores); `make test TEST_WORKERS=0` runs it in one process, in
# a fixed order. The API fuzz runs in one process either way: under pytest-xdist
# schemathesis' generated cases are listed but not run (3 of 75 ran).
TEST_WORKERS ?= 2
FUZZ = tests/test_serve_fuzz.py

test: $(DEV_STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --ignore=$(FUZZ)
	$(BIN)/pytest $(FUZZ)

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(DEV_STAMP)
	$(BIN)/python bench/gateway_overhead.py

# The HTTP API's OpenAPI document, published in docs/ (tests/test_serve_openapi.py checks it).
openapi: $(DEV_STAMP)
	$(BIN)/python -c "from corral.server.openapi import main; main()" > docs/openapi.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache
