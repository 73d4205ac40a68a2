# The two commands a newcomer needs: `make demo` and `make test`. Both install what they use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EVENTS ?= 1000000

.PHONY: demo test browser bench bench-projections bench-append bench-inline bench-import bench-upcasting bench-typed services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed  ## install and run the demo on the embedded SQLite default
	$(BIN)/projectionist demo

browser:  ## Debian's headless Chromium for the dashboard's browser test (if it is missing)
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# Message DB's SQL (npm package), for the tests of MessageDbSource; installed once.
MESSAGE_DB_VERSION := 1.3.1
MESSAGE_DB_DIR := .cache/message-db
MESSAGE_DB := $(MESSAGE_DB_DIR)/node_modules/@eventide/message-db/database/install.sh

$(MESSAGE_DB):
	npm install --silent --no-audit --no-fund --prefix $(MESSAGE_DB_DIR) @eventide/message-db@$(MESSAGE_DB_VERSION)
	touch $@

.PHONY: message-db
message-db: $(MESSAGE_DB)  ## Message DB's install scripts (npm) for the Message DB source's tests

test: $(VENV)/.installed-dev browser $(MESSAGE_DB)  ## lint, type-check and run every test (needs PostgreSQL)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

bench-append: $(VENV)/.installed-dev  ## append concurrency: 1 vs 8 appenders vs a table lock
	$(BIN)/python bench/append_concurrency.py

bench-inline: $(VENV)/.installed-dev  ## append latency with and without an inline projection
	$(BIN)/python bench/inline_latency.py

# SCALE=1 also runs the state projection on 5 x EVENTS (memory and cost per event vs length)
SCALE ?=
# PROFILE=file also runs the state projection under cProfile (after the measured runs)
PROFILE ?=
bench-projections: $(VENV)/.installed-dev  ## the suite and issue 14's references on EVENTS events
	$(BIN)/python bench/projections.py --events $(EVENTS) $(if $(SCALE),--scale) $(if $(PROFILE),--profile $(PROFILE))

bench-import: $(VENV)/.installed-dev  ## bulk import vs a bare binary COPY (200,000 events), and SQLite
	$(BIN)/python bench/import_events.py

bench-upcasting: $(VENV)/.installed-dev  ## the cost of upcasting per event (none, not applicable, a v1->v3 chain)
	$(BIN)/python bench/upcasting.py

bench-typed: $(VENV)/.installed-dev  ## typed payloads per event: dict vs msgspec vs dataclass vs pydantic
	$(BIN)/python bench/typed_payloads.py

bench: bench-projections bench-append bench-inline bench-import bench-upcasting bench-typed  ## every benchmark

.PHONY: bench-check
bench-check: $(VENV)/.installed-dev  ## the suite's own test: a small whole run, every read model equal
	$(BIN)/pytest bench/test_bench.py -q

services:  ## start local PostgreSQL, Redis and NATS (JetStream) if they are down (what .ci/run does)
	pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
	command -v nats-server >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server)
	bash -c '(exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null' || (mkdir -p /tmp/projectionist-nats && (nohup nats-server -js -a 127.0.0.1 -p 4222 -sd /tmp/projectionist-nats >/tmp/projectionist-nats.log 2>&1 &) && for i in $$(seq 30); do bash -c '(exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null' && break; sleep 1; done)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
