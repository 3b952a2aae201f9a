# `make run` and `make test` do all set-up themselves: a fresh clone needs only Python 3.11.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
#: Touched after a successful install; pip runs again only when pyproject.toml is newer.
STAMP := $(VENV)/.installed
#: Seconds any single test may take before pytest-timeout fails it.
TEST_TIMEOUT ?= 900

.PHONY: run test lint bench clean setup

run: setup
	$(BIN)/babelq up

test: setup
	$(BIN)/pytest -q --timeout=$(TEST_TIMEOUT) $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy app workers
	$(BIN)/lint-imports

bench: setup
	$(BIN)/babelq bench

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
