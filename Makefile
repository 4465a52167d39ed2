# driftline: `make run` runs the main job, `make test` runs the tests. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test test-fast lint bench setup system-deps clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Java 17 and Maven run the embedded Kafka; Chromium drives the labeling page in a browser test.
system-deps:
	@./.ci/system-deps

run: setup system-deps
	$(BIN)/driftline run

# Two pytest workers: most tests wait on Kafka, so two share the 2 cores well (562 tests: 9.8 min
# against 15.0 min in one process, measured on this 2-core machine); each worker starts its own broker.
test: setup system-deps
	$(BIN)/ruff check .
	$(BIN)/pytest -ra -n 2 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -ra -m "not slow and not kafka and not browser" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check streams tests bench

# Each script prints its own table; see README "Measured" and docs/ for the figures and flags.
bench: setup system-deps
	$(BIN)/python bench/broker_start.py
	$(BIN)/python bench/replay_throughput.py
	$(BIN)/python bench/stream_services.py
	$(BIN)/python bench/forecast_online.py
	$(BIN)/python bench/forecast_memory.py
	$(BIN)/python bench/ctr_cowclip.py
	$(BIN)/python bench/rank_active.py --quick
	$(BIN)/python bench/rank_queue.py

clean:
	rm -rf var .pytest_cache .ruff_cache
