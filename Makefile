# Tollgate: `make run` serves the console on the embedded default; `make test`
# runs the whole suite on PostgreSQL. Both set up .venv first.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/tollgate
PYTEST_ARGS ?=
FAKE_UPSTREAM_PORT ?= 9100

# Python 3.12: from PATH (pyenv's shim honours .python-version), or pyenv's install dir.
PYTHON312 := $(shell command -v python3.12 2>/dev/null || ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)

.PHONY: run test venv deps dev-deps migrate seed lint check-services fake-upstream bench bench-record-usage bench-usage-page bench-fake-upstream bench-gateway-request bench-gateway bench-dashboard clean

$(VENV)/.created:
	@if [ -z "$(PYTHON312)" ]; then echo "Python 3.12 is required (pyenv install 3.12, or put python3.12 on PATH)."; exit 1; fi
	$(PYTHON312) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@touch $@

$(VENV)/.deps: requirements.txt $(VENV)/.created
	$(PIP) install --quiet -r requirements.txt
	@touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt $(VENV)/.deps
	$(PIP) install --quiet -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.deps
deps: $(VENV)/.deps
dev-deps: $(VENV)/.dev-deps

migrate: deps
	$(PY) manage.py migrate --noinput

FAKE_UPSTREAM_URL = http://$(HOST):$(FAKE_UPSTREAM_PORT)

seed: migrate
	$(PY) manage.py seed_demo --url http://$(HOST):$(PORT)/ --upstream-url $(FAKE_UPSTREAM_URL)

# The console and the gateway in one uvicorn process, the fake upstream beside it (README).
run: seed
	@echo ""
	@echo "  Tollgate console and gateway: http://$(HOST):$(PORT)/  (API under /v1/; Ctrl-C to stop)"
	@echo "  Fake upstream: $(FAKE_UPSTREAM_URL)   Embedded default: SQLite in var/. See README for production."
	@echo ""
	@trap 'kill 0' INT TERM EXIT; \
	$(PY) -m gateway.fake_upstream --host $(HOST) --port $(FAKE_UPSTREAM_PORT) > /dev/null & \
	GATEWAY_OPENAI_BASE_URL=$(FAKE_UPSTREAM_URL) GATEWAY_ANTHROPIC_BASE_URL=$(FAKE_UPSTREAM_URL) \
	$(PY) -m uvicorn config.asgi:application --host $(HOST) --port $(PORT) --lifespan on --no-proxy-headers

# The fake OpenAI/Anthropic upstream on loopback (README: "A fake upstream for tests and the demo").
fake-upstream: deps
	$(PY) manage.py fake_upstream --host $(HOST) --port $(FAKE_UPSTREAM_PORT)

check-services: dev-deps
	@$(PY) -c "import psycopg,sys; \
	  url='$(TEST_DATABASE_URL)'; \
	  psycopg.connect(url.rsplit('/',1)[0] + '/postgres', connect_timeout=5).close()" 2>/dev/null \
	  || { echo "PostgreSQL is not reachable at $(TEST_DATABASE_URL) (the suite needs it; set TEST_DATABASE_URL)."; exit 1; }
	@command -v chromium >/dev/null || [ -n "$$CHROMIUM_PATH" ] \
	  || { echo "Chromium is missing: apt-get install chromium (browser tests drive Debian's Chromium)."; exit 1; }

test: check-services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks print their figures; each works in a scratch database it drops afterwards.
bench: bench-record-usage bench-usage-page bench-fake-upstream bench-gateway-request bench-dashboard

bench-record-usage: check-services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.record_usage

bench-usage-page: check-services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.usage_page

bench-dashboard: check-services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.dashboard

bench-gateway-request: check-services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.gateway_request

# Direct vs Tollgate vs LiteLLM's proxy (installed on first use in var/bench/litellm-venv).
# BENCH_ARGS=--quick for a smoke run; REDIS_URL to use another Redis database.
BENCH_REDIS_URL ?= redis://127.0.0.1:6379/0
BENCH_ARGS ?=
bench-gateway: check-services
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.gateway --redis-url $(BENCH_REDIS_URL) $(BENCH_ARGS)

bench-fake-upstream: dev-deps
	$(PY) -m bench.fake_upstream

lint: dev-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) staticfiles .pytest_cache test-artifacts
