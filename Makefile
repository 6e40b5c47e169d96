# Trainyard — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
# uv on PATH, else the one `pip install uv` put beside python3 (run as a module: where pip put its
# script need not be on PATH, so no path is guessed here)
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen
PYTEST_ARGS ?=
# every workspace package's source, found rather than listed, so a new service is type-checked and
# compiled from its first commit (tests/docs/test_lint_coverage.py holds this to the workspace members)
PACKAGE_SOURCES := contracts/src shared/src client/src $(wildcard services/*/src)

.PHONY: help install demo demo-sweep demo-pipeline up test test-rl test-kubeflow kfp-venv test-unit test-service test-security test-stack test-e2e test-chaos lint schemas asyncapi bench bench-scale bench-scheduler bench-cli bench-workflow bench-ui clean images test-airflow validate-deploy deploy-base deploy-nats deploy-secrets deploy-monitoring deploy-all deploy-dev

help:
	@echo "make demo     start the embedded stack, run the digits example, show its registered model"
	@echo "make test     unit, service and stack tests against a real nats-server (what CI runs)"
	@echo "make demo-sweep  the same stack, a sweep of the RL example (CEM on CartPole), its trial table and best model"
	@echo "make demo-pipeline  the same stack, the retrain pipeline (step outputs), the model it chose"
	@echo "make up       start the embedded stack and leave it running (Ctrl-C stops it)"
	@echo "make lint     ruff + mypy"
	@echo "make images   the Docker images, no registry needed; make test-e2e: tests on them"
	@echo "make schemas  regenerate contracts/schemas/*.json; make asyncapi: docs/asyncapi/*.json"
	@echo "make test-kubeflow  the kfp export (its own venv: make kfp-venv) and the TrainJob backend"
	@echo "make test-airflow  the Airflow provider (integrations/airflow) in its own venv, docs/airflow.md"
	@echo "make test-rl  the TF-Agents example (a ~1.9 GB runtime_env venv, cached), swept"

install: .venv/.installed

.venv/.installed: uv.lock pyproject.toml */pyproject.toml services/*/pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv || \
		python3 -m pip install --quiet --break-system-packages uv
	$(UV) sync --all-packages --frozen --compile-bytecode
	@# uv compiles site-packages only; the workspace's own packages are installed editable, so their
	@# bytecode is written here too: the first CLI call (or any, with PYTHONDONTWRITEBYTECODE set)
	@# then loads .pyc instead of compiling every module it imports
	$(RUN) python -m compileall -q $(PACKAGE_SOURCES)
	@touch $@

demo: install
	@UV="$(UV)" bash scripts/demo.sh

# a sweep of examples/rl/cem (Optuna TPE, ASHA pruning) on the embedded stack (docs/workflows.md);
# RL=tfagents: of the TF-Agents DQN (examples/rl/cartpole, its ~1.9 GB venv built once)
demo-sweep: install
	@UV="$(UV)" RL="$(RL)" bash scripts/demo.sh sweep

# the TF-Agents example through its runtime_env, swept (marker rl; the venv cached under
# ~/.cache/trainyard/runtime-envs, ~1.9 GB)
test-rl: install
	$(RUN) pytest -m rl $(PYTEST_ARGS)

# examples/pipelines/retrain.yaml on the embedded stack: its steps and the model version it chose
demo-pipeline: install
	@UV="$(UV)" bash scripts/demo.sh pipeline

up: install
	$(RUN) trainyard up

# the end-to-end tests (built images, `make images`) join in when a Docker engine answers
test: install
	@if docker info >/dev/null 2>&1; then marks="not chaos and not bench and not rl"; else \
		marks="not e2e and not chaos and not bench and not rl"; \
		echo "!!! NO DOCKER ENGINE: the end-to-end tests (e2e) are NOT run (scripts/engines.sh starts one) !!!"; \
	fi; \
	echo "pytest -m \"$$marks\" $(PYTEST_ARGS)"; \
	$(RUN) pytest -m "$$marks" $(PYTEST_ARGS)

# one target per pytest marker: `make test-security` runs `pytest -m security`. security: least
# privilege and bounds (docs/security.md, the threat table), also part of `make test`;
# distributed: gangs on every backend and the torch all-reduce example (builds its venv once,
# ~/.cache/trainyard)
MARKER_TESTS := test-e2e test-unit test-service test-security test-stack test-chaos test-distributed
$(MARKER_TESTS): test-%: install
	$(RUN) pytest -m $* $(PYTEST_ARGS)

# the Airflow provider (integrations/airflow, docs/airflow.md) in its own venv under ~/.cache/trainyard
# (Airflow 3.3 pins FastAPI below the services'); its tests start the embedded stack with .venv's python
AIRFLOW_VENV ?= $(HOME)/.cache/trainyard/airflow-venv
test-airflow: install
	@UV="$(UV)" bash integrations/airflow/venv.sh "$(AIRFLOW_VENV)"
	cd integrations/airflow && TRAINYARD_WORKSPACE_PYTHON="$(CURDIR)/.venv/bin/python" \
		"$(AIRFLOW_VENV)/bin/python" -m pytest $(PYTEST_ARGS)

# the kubernetes backend: manifests validated offline, the client side against kmock (no cluster)
test-kubernetes: install
	$(RUN) pytest -m kubernetes $(PYTEST_ARGS)

# Kubeflow (docs/kubeflow.md): the kfp SDK gets a venv of its own (it pins kubernetes<31 and
# protobuf<7, the workspace holds newer); --seed: kfp.local's tasks run `python -m pip`
KFP_VENV ?= $(HOME)/.cache/trainyard/kfp-venv
kfp-venv: $(KFP_VENV)/.installed

$(KFP_VENV)/.installed:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	rm -rf $(KFP_VENV)  # a venv without the marker is a broken build: start again
	$(UV) venv -q --seed --python "$$(command -v python3)" $(KFP_VENV)
	$(UV) pip install -q --python $(KFP_VENV)/bin/python kfp==2.17.3
	@touch $@

# the export compiled by kfp and run by kfp.local; the TrainJob backend against the emulator
test-kubeflow: install kfp-venv
	TRAINYARD_KFP_PYTHON=$(KFP_VENV)/bin/python TRAINYARD_TEST_REQUIRE_KFP=1 $(RUN) pytest -m kubeflow $(PYTEST_ARGS)

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy $(PACKAGE_SOURCES)

schemas: install
	$(RUN) python -m trainyard_contracts.schemas

asyncapi: install
	$(RUN) python scripts/asyncapi.py docs/asyncapi

images: install
	@bash scripts/images.sh $(IMAGES)

# Kubernetes (docs/deploy.md, "Kubernetes"): base first (namespace, settings, NATS), the Secrets,
# then any part alone: make deploy-scheduler. deploy-all: everything but Secrets; deploy-dev: with
# placeholder Secrets (throwaway clusters only).
KUBECTL ?= kubectl
K8S := deploy/k8s
K8S_SERVICES := submission scheduler executor registry telemetry workflow

deploy-base:
	$(KUBECTL) apply -k $(K8S)/base

deploy-nats:
	$(KUBECTL) apply -k $(K8S)/base/nats

deploy-secrets:
	KUBECTL="$(KUBECTL)" bash $(K8S)/secrets/create.sh

deploy-monitoring:
	$(KUBECTL) apply -k $(K8S)/monitoring

deploy-all:
	$(KUBECTL) apply -k $(K8S)/overlays/production

deploy-dev:
	$(KUBECTL) apply -k $(K8S)/overlays/dev

deploy-%:
	@test -f $(K8S)/services/$*/kustomization.yaml || { echo "make deploy-$*: no such part; one of:" \
		"$(K8S_SERVICES) base nats secrets monitoring all dev" >&2; exit 2; }
	$(KUBECTL) apply -k $(K8S)/services/$*

# compose file, k8s manifests, NATS users (a real nats-server), dashboards, contract fixtures
validate-deploy: install
	$(RUN) pytest -q -p no:cacheprovider tests/deploy contracts/tests/test_compat.py $(PYTEST_ARGS)

clean:
	rm -rf .trainyard-demo .pytest_cache .mypy_cache .ruff_cache

bench: install
	$(RUN) python tests/bench/bench_e2e.py $(BENCH_ARGS)
	$(MAKE) bench-scale

# history at scale (issue 23): idle RSS, then listing ms, RSS per process and a restart of everything
# at each step of SCALE_ARGS' --records (default 100000,1000000; a step that would not end before
# --until HH:MM UTC, or would take over half the free memory, is written under not_measured)
SCALE_ARGS ?=
bench-scale: install
	$(RUN) python tests/bench/bench_scale.py --out tests/bench/results/scale.json $(SCALE_ARGS)

# start-up of `trainyard --help` and `trainyard status -o json` against a running stack (budget 0.150 s)
bench-cli: install
	$(RUN) python tests/bench/bench_cli.py --out tests/bench/results/cli.json $(BENCH_ARGS)

# time to accept a 10,000-index job array over HTTP (goal <= 2 s), on the embedded stack
bench-workflow: install
	$(RUN) python tests/bench/bench_workflow.py --out tests/bench/results/workflow.json $(BENCH_ARGS)

# the web UI's jobs page with 100,000 jobs in the store (issue 20: jobs_page_ms_at_100k, goal <= 300 ms)
bench-ui: install
	$(RUN) pytest -m bench tests/ui/test_jobs_page_bench.py -p no:cacheprovider $(PYTEST_ARGS)

# decision time of one planning pass, pending x nodes in {1k,10k,100k} x {10,1k,5k}
bench-scheduler: install
	$(RUN) python tests/bench/bench_scheduler.py --out tests/bench/results/scheduler.json $(BENCH_ARGS)
