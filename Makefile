# Two entry points: `make run` (train if no model exists, then serve) and `make test`.
# Both create the virtual environment and install the project into it first.

PYTHON ?= python3
VENV ?= .venv
MODELS ?= models
MODEL_NAME ?= mnist
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run serve train test lint install clean bench

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
