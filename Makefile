# imgcls: every day-to-day command. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python
# The exact torch pair for this machine (CPU tests, CUDA build from local disk). On another
# machine pick yours, e.g. `make install TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install train sweep test test-fast lint format tensorboard clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: ## create .venv and install imgcls (editable) with its dev extras
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	@$(PY) -c "import torch, torchvision, lightning; print('installed: torch', torch.__version__, '| torchvision', torchvision.__version__, '| lightning', lightning.__version__)"

train: ## train the default model on the embedded digits dataset (ARGS="key=value ...")
	$(PY) train.py $(ARGS)

sweep: ## Optuna search on digits, summary.csv in its sweep dir (ARGS="hparams_search=cifar10_optuna")
	$(PY) train.py hparams_search=digits_optuna $(ARGS)

test: ## run the whole test suite (slow tests included)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: ## run the tests not marked slow
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: ## ruff lint + format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: ## ruff autofix + format
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

tensorboard: ## serve the logs of every run on http://localhost:6006
	$(VENV)/bin/tensorboard --logdir logs

clean: ## remove caches and all run logs
	rm -rf .pytest_cache .ruff_cache lightning_logs outputs multirun
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
	find logs -mindepth 1 -not -name .gitkeep -delete
