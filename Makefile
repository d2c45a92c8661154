# Every target installs what it needs into $(VENV) first; inputs are make variables.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

# Real workflow defaults (override on the command line: make train DATA=... CONFIG=...)
DATA ?= training_set.npz
CLEAN ?= build/training_set_clean.npz
REPORT ?= build/clean_report
CONFIG ?= configs/b7_reference.toml
RUN ?= runs/b7_reference
WEIGHTS ?= weights/b7_reference
TEST ?= ../shared/data/pbc96_dev.npz
ZIP ?= $(shell ls -t submission/submission_*.zip 2>/dev/null | head -n 1)

# Demo: everything on synthetic data made by our own code, on a CPU, offline.
DEMO := build/demo
SEED ?= 0

export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONPATH := $(CURDIR)

.PHONY: install demo test synth clean-data train submission eval server-check bench clean

install: $(INSTALLED)

# Re-runs only when requirements.txt changes, so it is fast when already done.
$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest -q

synth: $(INSTALLED)
	$(PY) -m bloodcells.synth --out $(DEMO)/demo.npz --seed $(SEED)

demo: $(INSTALLED)
	@mkdir -p $(DEMO)
	$(PY) -m bloodcells.synth --out $(DEMO)/demo.npz --seed $(SEED)
	@echo "demo: synthetic training set -> $(DEMO)/demo.npz"

# Train from a TOML config; the best model is exported to $(WEIGHTS) (model.json + weights).
# make train CONFIG=configs/cpu.toml DATA=build/training_set_clean.npz RUN=runs/cpu WEIGHTS=weights/cpu
# Add RESUME=1 to continue an interrupted run.
train: $(INSTALLED)
	$(PY) -m bloodcells.train --config $(CONFIG) --data $(DATA) --out $(RUN) --export $(WEIGHTS) $(if $(RESUME),--resume,)

# Long measurements: each bench/*.py prints its figures (nothing is asserted).
bench: $(INSTALLED)
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf build runs .pytest_cache
