# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv with the CPU build of torch and the package in editable mode.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench schema clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pinned: this build is the CPU one; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/adapter-store demo

lint: $(STAMP)
	$(BIN)/ruff check adapter_store tests benchmarks
	$(BIN)/ruff format --check adapter_store tests benchmarks
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks

schema: $(STAMP)
	$(BIN)/adapter-store schema > schemas/manifest.schema.json

clean:
	rm -rf $(VENV) adapter-store-demo .pytest_cache .mypy_cache .ruff_cache
