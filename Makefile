# The two commands a newcomer needs: `make demo` and `make test`. Both install what they use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EVENTS ?= 1000000

.PHONY: demo test browser bench bench-projections bench-append bench-inline services clean

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

test: $(VENV)/.installed-dev browser  ## lint, type-check and run every test (needs PostgreSQL)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

bench-append: $(VENV)/.installed-dev  ## append concurrency: 1 vs 8 appenders vs a table lock
	$(BIN)/python bench/append_concurrency.py

bench-inline: $(VENV)/.installed-dev  ## append latency with and without an inline projection
	$(BIN)/python bench/inline_latency.py

bench-projections: $(VENV)/.installed-dev  ## the projection suite on EVENTS events (default 1,000,000)
	$(BIN)/python bench/projections.py --events $(EVENTS)

bench: bench-projections bench-append bench-inline  ## every benchmark

services:  ## start local PostgreSQL, Redis and NATS (JetStream) if they are down (what .ci/run does)
	pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
	command -v nats-server >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server)
	bash -c '(exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null' || (mkdir -p /tmp/projectionist-nats && (nohup nats-server -js -a 127.0.0.1 -p 4222 -sd /tmp/projectionist-nats >/tmp/projectionist-nats.log 2>&1 &) && for i in $$(seq 30); do bash -c '(exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null' && break; sleep 1; done)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
