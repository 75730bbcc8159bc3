# ssft-deploy: `make demo` (the main job, end to end on synthetic data) and `make test`.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.setup-stamp
DEMO    ?= runs/demo
export OMP_NUM_THREADS ?= 2

.PHONY: setup test demo lint clean

# Creates (or reuses) .venv with the runtime, training, export and dev extras.
# torch 2.14.1 / torchvision 0.29.1 come from the machine's local wheel cache.
$(STAMP): setup.cfg pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(VPY) -m pip install -q -e '.[train,export,knn,dev]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(VPY) -m pytest -q tests

lint: setup
	$(VPY) -m ruff check ssft_deploy train export benchmarks tests examples

demo: setup
	$(VPY) -m train.demo --out $(DEMO)

clean:
	rm -rf runs build dist *.egg-info
