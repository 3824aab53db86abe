# Thin targets; everything real lives in the packages and tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOB ?= examples/digits.yaml
# Local runs and tests keep Ray on loopback (read by Ray at import; see tests/conftest.py).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0

.PHONY: setup run test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/python examples/demo.py $(JOB)

test: setup
	$(BIN)/python -m pytest tests

test-fast: setup
	$(BIN)/python -m pytest tests -m "not e2e and not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/storage_bench.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/spare_import.py
	$(BIN)/python bench/input.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
