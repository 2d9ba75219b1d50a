# Two entry points: `make run` (train if no model exists, then serve) and `make test`.
# Both create the virtual environment and install the project into it first.

PYTHON ?= python3
VENV ?= .venv
MODELS ?= models
MODEL_NAME ?= mnist
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

DEPLOY_VENV ?= .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed

.PHONY: run serve train test lint install clean deploy-check container-smoke

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	@if ls -d $(MODELS)/$(MODEL_NAME)/[0-9]* >/dev/null 2>&1; then \
		echo "Model found in $(MODELS)/$(MODEL_NAME); skipping training."; \
	else \
		$(BIN)/mnist-train --model-repository $(MODELS) --model-name $(MODEL_NAME); \
	fi
	$(BIN)/mnist-serve --model-repository $(MODELS) --model-name $(MODEL_NAME)

train: $(STAMP)
	$(BIN)/mnist-train --model-repository $(MODELS) --model-name $(MODEL_NAME)

serve: $(STAMP)
	$(BIN)/mnist-serve --model-repository $(MODELS) --model-name $(MODEL_NAME)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

$(DEPLOY_STAMP): deploy/requirements.txt
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install --quiet -r deploy/requirements.txt
	touch $(DEPLOY_STAMP)

# Static checks of the deployment files: Dockerfile, compose, Kubernetes manifests, policy scan.
deploy-check: $(DEPLOY_STAMP)
	$(DEPLOY_VENV)/bin/hadolint Dockerfile
	$(DEPLOY_VENV)/bin/python deploy/validate_compose.py docker-compose.yml
	$(DEPLOY_VENV)/bin/kubernetes-validate --strict $(filter-out k8s/kustomization.yaml,$(wildcard k8s/*.yaml))
	$(DEPLOY_VENV)/bin/checkov --config-file .checkov.yaml -d k8s --framework kubernetes
	$(DEPLOY_VENV)/bin/checkov --config-file .checkov.yaml -f Dockerfile --framework dockerfile

# Builds the image with podman and runs training and serving from it (slow: minutes).
container-smoke:
	deploy/container_smoke.sh

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .pytest_cache .mypy_cache .ruff_cache
