# Two commands for a new user: `make demo` and `make test`. Both build what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What `make demo` needs (the service and the simulator), and what the tests add to it.
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed-test

.PHONY: demo test lint typecheck unit services prometheus deploy-tools go-tools schemas clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[simulator]'
	touch $(RUNTIME)

# The test extra includes the simulator's, so it stands for both.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP) $(RUNTIME)

services:
	@bash scripts/services.sh

prometheus:
	@bash scripts/debian-tools.sh prometheus promtool prometheus

deploy-tools:
	@bash scripts/debian-tools.sh docker-compose docker-compose

# Go and Debian's amqp091-go, for the Go example of docs/wire-format.md (run offline).
go-tools:
	@bash scripts/debian-tools.sh "golang-go golang-github-rabbitmq-amqp091-go-dev" go

demo: $(RUNTIME) services
	$(BIN)/segmind-queue demo

# The benchmarks of issue 5 (bench/README.md); ARGS="--quick" or ARGS="--only polling".
bench: $(STAMP) services
	$(BIN)/python -m bench $(ARGS)

# ruff, then the layers of [tool.importlinter] in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy scripts/import_graph.py

# The suite waits on worker processes, RabbitMQ and the simulator more than it computes:
# two pytest processes (pytest-xdist), each taking a whole file at a time so that a file's
# module fixtures and the engines its chaos tests start (tests/chaos/conftest.py) are set
# up once. TEST_PROCESSES=1 runs it in one process.
TEST_PROCESSES ?= 2

test: $(STAMP) services prometheus deploy-tools go-tools lint typecheck
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile

unit: $(STAMP)
	$(BIN)/pytest -m "not integration"

schemas: $(STAMP)
	$(BIN)/segmind-queue schemas --write

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
