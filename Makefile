# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Where torch/torchvision come from. Empty (default): pip's configured index (PyPI unless pip.conf says
# otherwise), whose Linux x86_64 torch is the CUDA build (a ~5.5 GB venv, ~3.2 GB of it CUDA libraries).
# CPU-only machine: make clean; make TORCH_INDEX=https://download.pytorch.org/whl/cpu run
TORCH_INDEX ?=
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: run test test-fast lint bench-imbalance clean deploy-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision first, pinned, from TORCH_INDEX if set (pip's local wheel store, if any, still counts);
	# the next install finds the pin satisfied (2.14.1+cpu counts as 2.14.1) and keeps them
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

run: $(STAMP)  ## the default FedCMI simulation on the embedded synthetic-av data
	$(VENV)/bin/fedcmi simulate

test: $(STAMP)  ## the whole test suite
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## the suite without the end-to-end runs marked slow (Flower simulations, deployments)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check fedcmi clients server tests benchmarks

bench-imbalance: $(STAMP)  ## centralized: weak modality alone vs through the joint model
	$(PY) benchmarks/imbalance.py

clean:
	rm -rf $(VENV) .pytest_cache

deploy-demo: $(STAMP)  ## fedcmi over a real loopback deployment: SuperLink + 3 SuperNodes, TLS, node auth, 2 rounds
	$(PY) -m fedcmi.runtime.loopback --tls --work runs/deploy-demo/work
