# Two commands for a new user: `make demo` and `make test`. Both build what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit services prometheus deploy-tools schemas clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

services:
	@bash scripts/services.sh

prometheus:
	@bash scripts/debian-tools.sh prometheus promtool prometheus

deploy-tools:
	@bash scripts/debian-tools.sh docker-compose docker-compose

demo: $(STAMP) services
	$(BIN)/segmind-queue demo

# The benchmarks of issue 5 (bench/README.md); ARGS="--quick" or ARGS="--only polling".
bench: $(STAMP) services
	$(BIN)/python -m bench $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) services prometheus deploy-tools lint typecheck
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest -m "not integration"

schemas: $(STAMP)
	$(BIN)/segmind-queue schemas --write

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
