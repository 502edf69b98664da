PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# torch and torchvision are pinned to the CPU-usable wheels that lie on this machine's disk;
# on another machine any torch>=2.1 with its matching torchvision works.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint bench train

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"

test: install lint
	$(BIN)/python -m pytest -q tests

# ruff (configured in pyproject.toml): lint, then check the formatting (`ruff format` fixes it); mypy on the
# pure-PyTorch modules ([tool.mypy] files). .pre-commit-config.yaml runs the same checks before each commit.
lint: install
	$(BIN)/ruff check src tests bench docs/gen_reliability.py
	$(BIN)/ruff format --check src tests bench docs/gen_reliability.py
	$(BIN)/mypy

# The README's main job: the quickstart for lambda = 0 and the default lambda, as one Hydra multirun;
# the sweep summary at the end prints both test accuracies.
train: install
	$(BIN)/python -m vt_drloc.train -m experiment=quickstart drloc.lambda_drloc=0,1

bench: install
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/overhead.py --study
	$(BIN)/python bench/data.py
	$(BIN)/python bench/tar_reader.py
	$(BIN)/python bench/loop_overhead.py
