# Trainyard — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
RUN := $(UV) run --frozen
PYTEST_ARGS ?=

.PHONY: help install demo up test test-unit test-service test-stack test-e2e test-chaos lint schemas asyncapi bench clean images

help:
	@echo "make demo     start the embedded stack, run the digits example, show its registered model"
	@echo "make test     unit, service and stack tests against a real nats-server (what CI runs)"
	@echo "make up       start the embedded stack and leave it running (Ctrl-C stops it)"
	@echo "make lint     ruff + mypy"
	@echo "make schemas  regenerate contracts/schemas/*.json; make asyncapi: docs/asyncapi/*.json"

install: .venv/.installed

.venv/.installed: uv.lock pyproject.toml */pyproject.toml services/*/pyproject.toml
	@command -v uv >/dev/null 2>&1 || test -x "$(UV)" || python3 -m pip install --quiet uv
	$(UV) sync --all-packages --frozen
	@touch $@

demo: install
	@bash scripts/demo.sh

up: install
	$(RUN) trainyard up

# the end-to-end tests (built images, `make images`) join in when a Docker engine answers
test: install
	@if docker info >/dev/null 2>&1; then marks="not chaos and not bench"; else \
		marks="not e2e and not chaos and not bench"; \
		echo "!!! NO DOCKER ENGINE: the end-to-end tests (e2e) are NOT run (scripts/engines.sh starts one) !!!"; \
	fi; \
	echo "pytest -m \"$$marks\" $(PYTEST_ARGS)"; \
	$(RUN) pytest -m "$$marks" $(PYTEST_ARGS)

test-e2e: install
	$(RUN) pytest -m e2e $(PYTEST_ARGS)

test-unit: install
	$(RUN) pytest -m unit $(PYTEST_ARGS)

test-service: install
	$(RUN) pytest -m service $(PYTEST_ARGS)

test-stack: install
	$(RUN) pytest -m stack $(PYTEST_ARGS)

test-chaos: install
	$(RUN) pytest -m chaos $(PYTEST_ARGS)

# gangs on every backend and the torch all-reduce example (builds its venv once, ~/.cache/trainyard)
test-distributed: install
	$(RUN) pytest -m distributed $(PYTEST_ARGS)

# the kubernetes backend: manifests validated offline, the client side against kmock (no cluster)
test-kubernetes: install
	$(RUN) pytest -m kubernetes $(PYTEST_ARGS)

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy contracts/src services/scheduler/src/trainyard_scheduler/placement.py

schemas: install
	$(RUN) python -m trainyard_contracts.schemas

asyncapi: install
	$(RUN) python scripts/asyncapi.py docs/asyncapi

images: install
	@bash scripts/images.sh $(IMAGES)

clean:
	rm -rf .trainyard-demo .pytest_cache .mypy_cache .ruff_cache

bench: install
	$(RUN) python tests/bench/bench_e2e.py $(BENCH_ARGS)
