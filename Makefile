# bnlab: every target installs what it needs into .venv first (fresh machine friendly).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BNLAB  := $(VENV)/bin/bnlab
STAMP  := $(VENV)/.bnlab-installed
DEBIAN_DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

.PHONY: FORCE setup data browser reproduce docs test test-slow lint bench demo clean

## Which torch `make setup` installs (tools/torch_pip.sh): TORCH=auto (the default) picks the
## CUDA build where `nvidia-smi` answers and the CPU build elsewhere; TORCH=cpu, TORCH=cuda, or
## a wheel index such as TORCH=cu128 forces one. An unpinned `torch` would pull several GB of
## CUDA wheels even on a CPU machine, so the version is pinned on both paths.
TORCH         ?= auto
TORCH_VERSION := 2.13.0
TORCH_WANTED  := $(VENV)/.bnlab-torch

# The pip arguments for the wanted build, rewritten only when they change (so the stamp below,
# which records the build it installed, is remade exactly when the build must change).
$(TORCH_WANTED): FORCE
	@mkdir -p $(VENV)
	@sh tools/torch_pip.sh $(TORCH) $(TORCH_VERSION) > $@.new || { rm -f $@.new; exit 1; }
	@if cmp -s $@.new $@; then rm -f $@.new; else mv $@.new $@; fi

$(STAMP): pyproject.toml src/bnlab/norm/kernels/csrc/batch_norm_cpu.cpp $(TORCH_WANTED)
	$(PYTHON) -m venv $(VENV)
	# From a CUDA build back to the CPU one: `torch==X` alone would take the CUDA build as
	# satisfying the pin (a CUDA pin names its build, so pip replaces a CPU build by itself).
	@case "$$($(PY) -m pip show torch 2>/dev/null | sed -n 's/^Version: //p')" in \
	  *+cu*) grep -q '+cu' $(TORCH_WANTED) || $(PY) -m pip uninstall --quiet -y torch ;; esac
	@echo "bnlab: torch from: $$(cat $(TORCH_WANTED))"
	$(PY) -m pip install --quiet $$(cat $(TORCH_WANTED))
	$(PY) -m pip install --quiet -e '.[test]'
	# The fused C++ BatchNorm kernels (bnlab works without them, slower, if this fails).
	$(BNLAB) kernels build || echo "bnlab: kernels not built; the reference implementation is used"
	cp $(TORCH_WANTED) $(STAMP)

setup: $(STAMP)

## Fashion-MNIST: the Debian package where apt exists, else a verified download into the cache.
data: setup
	@if [ ! -f $(DEBIAN_DATA) ] && command -v apt-get >/dev/null 2>&1; then \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "apt-get could not install dataset-fashion-mnist; downloading instead"; \
	fi
	$(BNLAB) data fetch

## Headless Chromium for the report-rendering test (Debian's package, where apt exists).
browser:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium) \
	    || echo "apt-get could not install chromium; the rendering test will say it is skipped"; \
	fi

## The main job: the textbook's LeNet comparison (no BN / bnlab BN / torch BN), 10 epochs.
reproduce: data
	$(BNLAB) reproduce --epochs 10 --out runs/reproduce

## Every study's default run (finished runs reused; two at a time on a local Ray instance, one
## thread each), then docs/studies.md and docs/report/ rebuilt from the results
## (tests/test_docs_fresh.py checks they match the code).
docs: data
	$(PY) -m bnlab.studies.publish --runs runs/studies --docs docs --workers 2 --threads 1

## Fast suite plus the linter and the type checker ([tool.mypy]): what CI runs. The CUDA tests
## (-m cuda) run where torch sees a GPU and are reported skipped elsewhere: never deselect them
## here (tests/test_gpu_host.py checks the marker expression).
test: data browser
	$(PY) -m ruff check src tests benchmarks examples notebooks
	$(PY) -m mypy src
	$(PY) -m pytest -q -m "not slow"

## Everything, including the long property and fault-injection runs.
test-slow: data browser
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check src tests benchmarks examples notebooks
	$(PY) -m mypy src

## Speed (every table of BENCHMARKS.md): the op against ATen and the memory floor, a ResNet-18
## step, LeNet-BN end to end against the textbook recipe, its profile, and torch.compile.
bench: data
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_bn.py --reps 10
	$(PY) benchmarks/bench_resnet.py
	$(PY) benchmarks/bench_resnet.py --memory system
	$(PY) benchmarks/bench_train.py --seeds 3
	$(PY) benchmarks/profile_step.py
	$(PY) benchmarks/compile_step.py

## A short demonstration of the layer against torch.nn.
demo: setup
	$(BNLAB) demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache

FORCE:
