# The two commands a new user needs are `make demo` and `make test`.
# Everything installs into .venv with uv (fetched from PyPI into the venv itself).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test unit lint typecheck docs bench ci clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(UV): $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

$(STAMP): $(UV) pyproject.toml
	$(UV) pip install --quiet --python $(BIN)/python -e ".[all]" --group dev
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## demo: the main demo on embedded defaults (SQLite, in-memory broker; no servers)
demo: $(STAMP)
	$(BIN)/python -m examples.demo

## test: the full suite (unit + integration against real PostgreSQL, Redis, Kafka-protocol broker)
test: $(STAMP)
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict src tests/typing

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python -m benchmarks --write-docs

ci:
	bash .ci/run

clean:
	rm -rf $(VENV) site dist build .pytest_cache .mypy_cache .ruff_cache
