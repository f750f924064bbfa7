# One-command entry points. `make demo` and `make test` install into .venv first if needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast clean

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

clean:
	rm -rf $(VENV) results .pytest_cache
