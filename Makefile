# imgcls: every day-to-day command. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python
# The exact torch pair for this machine (CPU tests, CUDA build from local disk). On another
# machine pick yours, e.g. `make install TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install train sweep test test-fast lint format tensorboard clean gpu-bundle gpu-check

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

# One pytest worker per core (each, and the runs it starts, on its share of the threads:
# tests/conftest.py); workers steal queued tests from each other, so the suite ends together.
XDIST ?= -n auto --dist worksteal
test: ## run the whole test suite (slow tests included), one worker per core
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: ## run the tests not marked slow
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: ## ruff lint + format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: ## ruff autofix + format
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# What a GPU machine without internet lacks, in one git-ignored folder (< 64 MiB): the wheels of
# hydra-core, omegaconf and antlr4 (a source archive, built here) and the benchmark data.
GPU_BUNDLE ?= .gpu
SHARED_DATA ?= ../shared/data
gpu-bundle: ## here: what make gpu-check needs on a GPU machine, into .gpu/ (docs/gpu.md: Contributing)
	rm -rf $(GPU_BUNDLE) && mkdir -p $(GPU_BUNDLE)/wheels
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -d $(GPU_BUNDLE)/wheels hydra-core==1.3.2 omegaconf==2.3.0
	$(PY) -m pip wheel --quiet --no-deps -w $(GPU_BUNDLE)/wheels antlr4-python3-runtime==4.9.3
	cp $(SHARED_DATA)/cifar10-jpg.tar.xz $(SHARED_DATA)/imagenet-sample-100.tar $(GPU_BUNDLE)/
	@du -sh $(GPU_BUNDLE)

gpu-check: ## on a GPU machine: the CUDA tests and every GPU target, one table (~7 min)
	python3 -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target /tmp/imgcls-site $(GPU_BUNDLE)/wheels/*.whl
	PYTHONPATH=src:.:/tmp/imgcls-site python3 benchmarks/gpu_check.py --data $(GPU_BUNDLE) $(ARGS)

tensorboard: ## serve the logs of every run on http://localhost:6006
	$(VENV)/bin/tensorboard --logdir logs

clean: ## remove caches and all run logs
	rm -rf .pytest_cache .ruff_cache lightning_logs outputs multirun
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
	find logs -mindepth 1 -not -name .gitkeep -delete
