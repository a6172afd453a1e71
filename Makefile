# The two commands a new user runs: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-all

.PHONY: demo test lint bench zoo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The pinned torch comes first so that no extra can pull a CUDA build of torch.
$(STAMP): $(BIN)/python setup.cfg requirements-test.txt
	$(BIN)/pip install --quiet -r requirements-test.txt
	$(BIN)/pip install --quiet -r requirements-test.txt -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gradcam explain --method all --output-dir results
	$(BIN)/gradcam compare --output results/compare.png

# ruff first (lint + import order, configured in pyproject.toml): seconds, and it fails before the suite starts
test: $(STAMP)
	$(BIN)/ruff check gradcam tests benchmarks
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check gradcam tests benchmarks

# Peers (pytorch-grad-cam, captum, torchcam) need torchvision, which does not import beside torch 2.13.0:
# the benchmarks get their own venv with torch 2.14.1 + torchvision 0.29.1 (both on local disk).
.venv-bench/.installed: benchmarks/requirements-bench.txt setup.cfg
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet -r benchmarks/requirements-bench.txt
	.venv-bench/bin/pip install --quiet -e .
	touch $@

bench: .venv-bench/.installed
	.venv-bench/bin/python benchmarks/bench_torch.py

# The real torchvision models (random weights) in the same venv: automatic layer, layout, Grad-CAM against a
# hand-written one (make test runs replicas of them, tests/zoo/torch_replicas.py)
zoo: .venv-bench/.installed
	cd tests/zoo && ../../.venv-bench/bin/python torchvision_zoo.py

clean:
	rm -rf $(VENV) results .pytest_cache
