# bnlab: every target installs what it needs into .venv first (fresh machine friendly).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bnlab-installed

.PHONY: setup test test-slow lint demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The pinned CPU build; an unpinned `torch` would pull several GB of CUDA wheels.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## Fast suite (CPU, a few minutes) plus the linter: what CI runs.
test: setup
	$(PY) -m ruff check src tests
	$(PY) -m pytest -q -m "not slow"

## Everything, including the long property and fault-injection runs.
test-slow: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check src tests

## A short demonstration of the layer against torch.nn.
demo: setup
	$(VENV)/bin/bnlab demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
