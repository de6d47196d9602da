# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv with the CPU build of torch and the package in editable mode.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_INDEX ?=

.PHONY: demo test lint bench schema clean

# torch is pinned to a CPU build: an unpinned torch pulls a multi-GB CUDA build. This
# project's machines serve 2.13.0 as a CPU wheel from local disk; elsewhere, run e.g.
#   make test TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_INDEX) torch==2.13.0
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
