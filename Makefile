# Makefile — developer entry points.
#
#   make venv         create .venv (python3.11), install requirements/dev.txt (uv), then the project
#   make servers      fetch and start Kafka, Elasticsearch and PostgreSQL (deploy/local/servers.sh)
#   make up           venv + Kafka and Elasticsearch + the app (bootstrap, API, indexer, alerts, demo data)
#   make down         stop the app processes started by `up`, then all servers
#   make reset        down + wipe all server data
#   make test         servers + lint + pytest over tests/ (benchmarks excluded)
#   make lint         ruff format --check, ruff check, mypy
#   make helm-chart   regenerate deploy/helm/artifact-search from the kustomize manifests
#   make lock         re-resolve requirements/*.txt from pyproject.toml (uv; pins kept, hashes)
#   make test-pythons the unit tier on Python 3.12 and 3.13 too (PYTHON_VERSIONS; venvs in .local/)
#   make bench        benchmarks (tests.benchmarks.run); bench-quick: the short variant
#   make profile-engine  where the indexer's CPU goes, without Kafka or Elasticsearch
#   make status       one line per server and app process
#   make image        build the image here (deploy/docker/build.sh app; needs a Docker engine)
#   make compose-up   build every image here, then start deploy/compose.yaml with them
#   make compose-demo the demo dataset published inside the compose stack (the image's `produce`)
#   make compose-smoke  the compose stack started and checked end to end (tests/compose)
#
# Runtime state lives in .local/ (git-ignored); app pid files and logs in .local/run.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
PY := .venv/bin/python
SERVERS := deploy/local/servers.sh
RUN_DIR ?= .local/run
# the indexer's state directory (INDEXER_STATE_DIR; services/config.py has the same default)
STATE_DIR := $(or $(INDEXER_STATE_DIR),.local/indexer-state)
# `make venv` installs again only when a lock or pyproject.toml changed since the last install
VENV_STAMP := .venv/.installed

# where deploy/local/servers.sh runs the servers (same port variables as the script)
export KAFKA_BOOTSTRAP_SERVERS ?= 127.0.0.1:$(or $(KAFKA_PORT),9092)
export ELASTICSEARCH_URL ?= http://127.0.0.1:$(or $(ES_PORT),9200)
export POSTGRES_DSN ?= postgresql://postgres@127.0.0.1:$(or $(PG_PORT),55432)/postgres

PYTEST_ARGS ?=
DEMO ?= 1
API_PORT ?= $(or $(QUERY_PORT),4200)
# fast pure tier first, then the server-backed tiers (benchmarks are not tests)
TEST_TIERS := tests/unit tests/integration tests/e2e tests/ops tests/routing tests/reliability \
  tests/conformance tests/sync tests/faults tests/containers

# `docker compose` (the plugin) when present, else Debian 12's docker-compose
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_ARGS := -p prefect-artifact-search -f deploy/compose.yaml
LOCAL_IMAGES := KAFKA_IMAGE=artifact-search-kafka:local ES_IMAGE=artifact-search-elasticsearch:local \
  BASE_IMAGE=artifact-search-base:bookworm

.PHONY: help venv servers servers-app up down reset test lint lock test-pythons bench bench-quick status \
  image compose-up compose-demo compose-down compose-smoke profile-engine helm-chart

help:
	@sed -n '3,20p' Makefile | sed 's/^# \{0,1\}//'

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements/dev.txt pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11" >&2; exit 1; }; \
	  echo "creating .venv with $(PYTHON)"; $(PYTHON) -m venv .venv; \
	fi
	@# uv (its version pinned in the lock) installs the lock with its hashes, far faster than pip
	$(PY) -m pip install -q "$$(grep -m1 '^uv==' requirements/dev.txt | cut -d' ' -f1)"
	@# --compile-bytecode: every process (the indexer, the API, each test's children) would
	@# otherwise compile its imports again where PYTHONDONTWRITEBYTECODE is set (4.1 s
	@# against 1.9 s to import the indexer and the API here), as the image does at build
	$(PY) -m uv pip install -q --compile-bytecode --python $(PY) -r requirements/dev.txt
	$(PY) -m uv pip install -q --python $(PY) --no-deps -e .
	@touch $@

servers:
	$(SERVERS) fetch all
	$(SERVERS) start all

# what the app needs (PostgreSQL is only the tests' Prefect oracle)
servers-app:
	$(SERVERS) fetch kafka
	$(SERVERS) fetch es
	$(SERVERS) start kafka
	$(SERVERS) start es

# start a long-running app command in the background: @$(call bg,NAME,ARGS)
bg = mkdir -p $(RUN_DIR); \
  if [ -f $(RUN_DIR)/$(1).pid ] && kill -0 $$(cat $(RUN_DIR)/$(1).pid) 2>/dev/null; then \
    echo "$(1): already running (pid $$(cat $(RUN_DIR)/$(1).pid))"; \
  else \
    setsid nohup $(PY) -m artifact_search.cli $(2) >$(RUN_DIR)/$(1).log 2>&1 </dev/null & \
    echo $$! >$(RUN_DIR)/$(1).pid; echo "$(1): started (pid $$!, log $(RUN_DIR)/$(1).log)"; \
  fi

# the demo runs the alerts worker, fed by the indexer's change feed (docs/search.md)
up: export INDEXER_PUBLISH_CHANGES ?= true
up: venv servers-app
ifneq ($(wildcard artifact_search/cli.py),)
# ---- app hooks: run only once artifact_search/cli.py exists ----
	$(PY) -m artifact_search.cli bootstrap
	@if ! { [ -f $(RUN_DIR)/api.pid ] && kill -0 $$(cat $(RUN_DIR)/api.pid) 2>/dev/null; } \
	  && ss -ltnH "sport = :$(API_PORT)" 2>/dev/null | grep -q .; then \
	  echo "port $(API_PORT) is already taken: $$(ss -ltnpH "sport = :$(API_PORT)" | head -n1)" >&2; \
	  echo "stop it, or choose another port: make up QUERY_PORT=<port>" >&2; exit 1; \
	fi
	@$(call bg,api,api)
	@$(call bg,indexer,indexer)
	@$(call bg,alerts,alerts)
	@for i in $$(seq 1 120); do \
	  curl -sf -o /dev/null http://127.0.0.1:$(API_PORT)/api/ready && break; \
	  if [ -f $(RUN_DIR)/api.pid ] && ! kill -0 $$(cat $(RUN_DIR)/api.pid) 2>/dev/null; then \
	    echo "the API exited: see $(RUN_DIR)/api.log" >&2; tail -5 $(RUN_DIR)/api.log >&2; exit 1; \
	  fi; sleep 0.5; \
	done; curl -sf -o /dev/null http://127.0.0.1:$(API_PORT)/api/ready \
	  || { echo "the API did not become ready on port $(API_PORT) (see $(RUN_DIR)/api.log)" >&2; exit 1; }
ifneq ($(DEMO),0)
	$(PY) -m datagen demo
endif
	@echo
	@echo "API ready on http://127.0.0.1:$(API_PORT)/api; the CLI: $(PY) -m artifact_search.cli --help"
	@echo "Try:  curl -s -X POST http://127.0.0.1:$(API_PORT)/api/artifacts/filter -H 'Content-Type: application/json' -d '{\"limit\": 5}'"
else
	@echo "artifact_search/cli.py does not exist yet: servers are up, no app started."
endif

down:
	@for f in $(RUN_DIR)/*.pid; do \
	  [ -f "$$f" ] || continue; pid=$$(cat "$$f"); name=$$(basename "$$f" .pid); \
	  if kill -0 "$$pid" 2>/dev/null; then \
	    echo "$$name: stopping pid $$pid"; kill -TERM "$$pid" 2>/dev/null || true; \
	    for i in $$(seq 1 40); do kill -0 "$$pid" 2>/dev/null || break; sleep 0.25; done; \
	    kill -KILL "$$pid" 2>/dev/null || true; \
	  fi; rm -f "$$f"; \
	done
	$(SERVERS) stop all

reset: down
	$(SERVERS) reset all
	rm -rf $(RUN_DIR) $(STATE_DIR)

test:
	@$(SERVERS) status all >/dev/null 2>&1 || $(MAKE) --no-print-directory servers
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest $(TEST_TIERS) $(PYTEST_ARGS)

lint:
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m mypy

profile-engine: venv
	$(PY) -m tests.benchmarks.profile_engine --artifacts 20000 \
	  --profile docs/benchmarks/profile-engine-20k.txt

# requirements/*.txt: every pin with its hashes, for Python 3.11-3.13 on any platform. Existing
# pins are kept (UV_ARGS=--upgrade to move them); tests/unit/test_lock.py fails when a lock and
# pyproject.toml disagree. No index URL is written into the files.
UV_COMPILE = $(PY) -m uv pip compile --quiet --universal --generate-hashes --custom-compile-command "make lock" $(UV_ARGS)
# deploy/helm/artifact-search, generated from the kustomize base and components (tests/ops fails
# when it is stale). Needs kustomize (tests/ops/k8s_tools.py names the version).
helm-chart: venv
	$(PY) deploy/helm/generate_chart.py --kustomize "$$(command -v kustomize || echo $$(go env GOPATH)/bin/kustomize)"

lock:
	$(UV_COMPILE) pyproject.toml -o requirements/runtime.txt
	$(UV_COMPILE) pyproject.toml --all-extras -o requirements/dev.txt
	$(UV_COMPILE) --python-version 3.11 requirements/build.in -o requirements/build.txt

# The unit tier on each other supported Python: an interpreter from pyenv's versions or PATH, a
# venv in .local/py<version> synced to requirements/dev.txt. A version not found is reported
# and skipped; a failing test fails the target.
PYTHON_VERSIONS ?= 3.12 3.13
test-pythons:
	@for v in $(PYTHON_VERSIONS); do \
	  py=$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$v.*/bin/python 2>/dev/null | sort -V | tail -n1); \
	  if [ -z "$$py" ] && command -v python$$v >/dev/null && python$$v -V >/dev/null 2>&1; then \
	    py=$$(command -v python$$v); fi; \
	  if [ -z "$$py" ]; then echo "Python $$v: no interpreter found here, skipped"; continue; fi; \
	  venv=.local/py$$v; \
	  [ -x $$venv/bin/python ] || $(PY) -m uv venv -q -p "$$py" $$venv; \
	  $(PY) -m uv pip sync -q --python $$venv/bin/python requirements/dev.txt; \
	  echo "== tests/unit on $$($$venv/bin/python -V)"; \
	  $$venv/bin/python -m pytest tests/unit $(PYTEST_ARGS); \
	done

bench bench-quick:
	@if [ ! -f tests/benchmarks/run.py ] && [ ! -f tests/benchmarks/run/__main__.py ]; then \
	  echo "no benchmark runner yet: tests/benchmarks/run.py does not exist" >&2; exit 1; \
	fi
	$(PY) -m tests.benchmarks.run $(if $(filter bench-quick,$@),--quick,)

status:
	@$(SERVERS) status all || true
	@for f in $(RUN_DIR)/*.pid; do \
	  [ -f "$$f" ] || continue; pid=$$(cat "$$f"); name=$$(basename "$$f" .pid); \
	  if kill -0 "$$pid" 2>/dev/null; then printf '%-6s running  pid=%s\n' "$$name" "$$pid"; \
	  else printf '%-6s stopped\n' "$$name"; fi; \
	done

image: venv
	deploy/docker/build.sh app

# images built here (a Debian base, Kafka and Elasticsearch from the Maven artifacts, the app from
# a wheelhouse), for machines that cannot pull public images; plain `$(COMPOSE) $(COMPOSE_ARGS) up`
# uses the public ones
compose-up: venv
	deploy/docker/build.sh all
	$(LOCAL_IMAGES) $(COMPOSE) $(COMPOSE_ARGS) up --detach --build
	@echo "API: http://127.0.0.1:4200/api  demo data: make compose-demo"

# the image has no data generator (datagen/ is not shipped): the events are written here and
# published by the image's `produce` inside the stack (its Kafka is not reachable from the host)
compose-demo: venv
	@mkdir -p .local
	$(PY) -m datagen demo --jsonl .local/demo.jsonl
	$(LOCAL_IMAGES) $(COMPOSE) $(COMPOSE_ARGS) run --rm \
	  -v "$(CURDIR)/.local/demo.jsonl:/tmp/demo.jsonl:ro" bootstrap produce /tmp/demo.jsonl

compose-down:
	$(LOCAL_IMAGES) $(COMPOSE) $(COMPOSE_ARGS) down

compose-smoke: venv
	$(PY) -m pytest tests/compose $(PYTEST_ARGS)
