# Two entry points: `make run` (train if no model exists, then serve) and `make test`.
# Both create the virtual environment and install the project into it first, pinned by the lock
# for its Python version (requirements/py3.X.txt; `make lock` writes them).

# Empty: the first of python3, python3.13, python3.12, python3.11 that is 3.11-3.13.
PYTHON ?=
export PYTHON
SUPPORTED_PYTHONS := 3.11 3.12 3.13
VENV ?= .venv
MODELS ?= models
MODEL_NAME ?= mnist
TRAIN_FLAGS ?=  # extra mnist-train flags, e.g. TRAIN_FLAGS="--epochs 3"
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

DEPLOY_VENV ?= .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed

.PHONY: run serve train test lint install lock clean deploy-check container-smoke

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard requirements/*.txt)
	@python=$$(scripts/find-python.sh) || exit 1; \
	if [ ! -x $(BIN)/python ]; then echo "== Creating $(VENV) with $$python"; $$python -m venv $(VENV); fi
	@version=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	echo "== Installing mnist-serving and its locked dependencies (requirements/py$$version.txt)"; \
	echo "   into $(VENV): TensorFlow alone is ~600 MB, so the first time takes a minute or more"; \
	start=$$(date +%s); \
	$(BIN)/python -m pip install --quiet --upgrade pip && \
	$(BIN)/python -m pip install --quiet -c requirements/py$$version.txt -e '.[dev]' && \
	echo "   installed in $$(( $$(date +%s) - start )) s"
	@touch $(STAMP)

# The locks: every dependency pinned, one file per supported Python (with the test tools) and
# one for the service image (without). Needs the package index.
lock:
	@test -x $(BIN)/uv || { python=$$(scripts/find-python.sh) && $$python -m venv $(VENV) && \
		$(BIN)/python -m pip install --quiet uv==0.13.9; } || exit 1
	@for version in $(SUPPORTED_PYTHONS); do \
		for extra in dev service; do \
			out=requirements/py$$version.txt; flags="--extra dev"; \
			if [ $$extra = service ]; then \
				out=requirements/service-py$$version.txt; flags="--extra otel"; \
			fi; \
			$(BIN)/uv pip compile pyproject.toml $$flags --python-version $$version \
				--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
				--quiet -o $$out || exit 1; \
			echo "wrote $$out"; \
		done; \
	done

run: $(STAMP)
	@if ls -d $(MODELS)/$(MODEL_NAME)/[0-9]* >/dev/null 2>&1; then \
		echo "== Model found in $(MODELS)/$(MODEL_NAME): serving it (make train adds a version)"; \
	else \
		echo "== No model in $(MODELS)/$(MODEL_NAME) yet: training one first, then serving it."; \
		echo "   The default CNN takes 6 to 25 minutes on 2 CPU cores (machines differ); progress follows."; \
		$(BIN)/mnist-train --model-repository $(MODELS) --model-name $(MODEL_NAME) $(TRAIN_FLAGS) \
			|| exit 1; \
	fi
	@echo "== Starting the server: it logs 'ready' with the page's address once the model is"
	@echo "   loaded (a few seconds). Ctrl-C stops it."
	@$(BIN)/mnist-serve --model-repository $(MODELS) --model-name $(MODEL_NAME)

train: $(STAMP)
	$(BIN)/mnist-train --model-repository $(MODELS) --model-name $(MODEL_NAME) $(TRAIN_FLAGS)

serve: $(STAMP)
	$(BIN)/mnist-serve --model-repository $(MODELS) --model-name $(MODEL_NAME)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

$(DEPLOY_STAMP): deploy/requirements.txt
	@python=$$(scripts/find-python.sh) || exit 1; $$python -m venv $(DEPLOY_VENV)
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
