# One-command entry points. `make demo` and `make test` install into .venv first if needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast clean gpu-wheels

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch/torchvision are pinned to the builds these machines ship (see pyproject.toml).
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/landscape-submit experiment=demo launcher.local_workers=2

# Tests run on every core (pytest-xdist): each test keeps to one torch thread (tests/conftest.py).
test: $(STAMP)
	$(BIN)/python -m pytest -n auto

# The pure-Python wheels that benchmarks/gpu_acceptance.sh installs on a GPU machine whose image
# has torch but not these, and no network (BENCHMARKS.md, "GPU acceptance").
gpu-wheels:
	$(PYTHON) -m pip wheel --quiet --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.1 \
		antlr4-python3-runtime==4.9.3 submitit==1.5.4 torch-pruning==1.6.1 pyhessian==0.1

clean:
	rm -rf $(VENV) results .pytest_cache
