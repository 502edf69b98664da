PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# torch and torchvision are pinned to the CPU-usable wheels that lie on this machine's disk;
# on another machine any torch>=2.1 with its matching torchvision works.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-matrix lint bench train

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"

test: install lint
	$(BIN)/python -m pytest -q tests
	$(MAKE) -o install test-matrix  # install ran above

# The Lightning version matrix. `make install` brings the newest pytorch-lightning / lightning, which the whole
# suite above runs on; this target reruns the Lightning-facing tests on each older version listed here: the floor
# of pyproject.toml's requirements (2.6.0: the first whose load_from_checkpoint takes weights_only, which
# vt-drloc-eval and the checkpoint tests use). Each version is pip-installed without dependencies into
# build/lightning-<v>/, which PYTHONPATH puts in front of the venv's site-packages, so everything else (torch,
# torchmetrics, timm, ...) is the venv's: about 10 s of install and 1-2 min of tests.
LIGHTNING_MATRIX ?= 2.6.0
MATRIX_TESTS ?= tests/test_lightning_private.py tests/test_lightning_packages.py tests/test_module.py tests/test_callback.py
# the three slowest face tests (a real-data run, the notebook, two DDP processes) run on the newest version only
MATRIX_SKIP ?= not learnable_on_real_cifar and not notebook and not ddp
test-matrix: install
	@set -e; for v in $(LIGHTNING_MATRIX); do \
		dir=build/lightning-$$v; rm -rf $$dir; \
		$(BIN)/pip install -q --no-deps --target $$dir pytorch-lightning==$$v lightning==$$v; \
		PYTHONPATH=$$dir$${PYTHONPATH:+:$$PYTHONPATH} $(BIN)/python -c "import pytorch_lightning as a, lightning as b; \
			assert a.__version__ == b.__version__ == '$$v', (a.__version__, b.__version__); print('Lightning', a.__version__)"; \
		PYTHONPATH=$$dir$${PYTHONPATH:+:$$PYTHONPATH} $(BIN)/python -m pytest -q -p no:cacheprovider $(MATRIX_TESTS) -k "$(MATRIX_SKIP)"; \
	done

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
