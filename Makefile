# zerolens — `make run` serves the app on http://localhost:8000, `make test` runs every test.
# Each target creates .venv and installs what it needs by itself.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= web,model,weights,dev,bench,keras-jax,keras-torch
MODEL_DIR ?= build/models/efficientnet_lite0
# make run WEB_PORT=8100 MODEL_PORT=5577 HEALTH_PORT=8082: other ports (8000, 5576 and 8081 when unset).
WEB_PORT ?=
MODEL_PORT ?=
HEALTH_PORT ?=

.PHONY: help venv model run test lint settings bench drills images deploy-tools chart-check kind-e2e clean

help:
	@echo "make run    build the model if missing, start the model server and the web tier; open http://localhost:8000"
	@echo "           once it prints \"zerolens is ready\". Ctrl-C stops both. Other ports:"
	@echo "           make run WEB_PORT=8100 MODEL_PORT=5577 HEALTH_PORT=8082"
	@echo "make test   lint and run the whole test suite"
	@echo "make drills run the reliability drills (tests/drills) and write docs/reliability.md"
	@echo "make bench  benchmark zerolens against the ceiling, the baselines and Triton, Mosec and LitServe"
	@echo "           (installed on first use under build/bench-venvs; BENCH_ARGS=--no-peers skips them, --help)"
	@echo "           GPU=1: the keras runtime alone and behind the model server (bench/gpu.py)"
	@echo "make images build zerolens/web:dev and zerolens/model:dev-cpu (GPU=1 adds dev-gpu)"
	@echo "make chart-check  offline Kubernetes checks: helm lint/template, kubernetes-validate, operator CRD schemas,"
	@echo "                  promtool, checkov, hadolint"
	@echo "make kind-e2e     install the chart on a kind cluster and test it (needs kind and docker)"
	@echo "make model  convert the packaged EfficientNet-Lite0 weights into $(MODEL_DIR)"
	@echo "make settings    regenerate the chart schema, k8s/base/config and the README table from services/config.py"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

# The exporter's code is its package plus the artifacts module, as in its manifest hash and Dockerfile.model.
$(MODEL_DIR)/manifest.json: $(VENV)/.installed $(wildcard services/exporter/*.py) services/artifacts.py
	$(BIN)/python -m services.exporter --out $(MODEL_DIR)

model: $(MODEL_DIR)/manifest.json

# exec: the script replaces the recipe's shell, so a SIGTERM to make (which make forwards to its recipe)
# reaches the script, which stops both servers.
run: model
	WEB_PORT=$(WEB_PORT) MODEL_PORT=$(MODEL_PORT) HEALTH_PORT=$(HEALTH_PORT) MODEL_DIR=$(MODEL_DIR) BIN=$(BIN) \
	  exec ./scripts/run.sh

lint: venv
	$(BIN)/ruff check services tests bench scripts
	$(BIN)/ruff format --check services tests bench scripts
	$(BIN)/python scripts/settings.py --check
	$(BIN)/openapi-spec-validator services/web/openapi.yaml

# After a change to services/config.py: the chart's schema and settings template, k8s/base/config and the
# README's table of settings are generated from it.
settings: venv
	$(BIN)/python scripts/settings.py

# GPU=1 also builds zerolens/model:dev-gpu. ZEROLENS_ENGINE=docker skips the podman setup.
images:
	@if [ "$${ZEROLENS_ENGINE:-podman}" = podman ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  scripts/podman-setup.sh; fi
	scripts/images.sh $(if $(GPU),--gpu)

# Pinned helm/kubectl (from npm) and the validators in their own venv, under build/tools (cached).
deploy-tools:
	./scripts/deploy-tools.sh

chart-check: deploy-tools
	./scripts/check-deploy.sh

kind-e2e: venv deploy-tools
	./scripts/kind-e2e.sh

# Debian's chromium for tests/browser (Playwright downloads no browser) and iptables for the partition
# drills, installed with apt-get when missing.
.PHONY: test-tools
test-tools:
	./scripts/test-tools.sh

test: model lint chart-check test-tools
	$(BIN)/python -m pytest -q

drills: model
	rm -rf build/drills
	$(BIN)/python -m pytest -q tests/drills
	$(BIN)/python -m tests.drills.report

# GPU=1: the keras runtime alone and behind the model server (bench/gpu.py; BENCH_ARGS="--backend torch").
bench: model
	$(BIN)/python -m $(if $(GPU),bench.gpu,bench.run) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
