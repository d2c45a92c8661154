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

.PHONY: install demo test synth clean-data train submission eval server-check server-check-tiny bench clean

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

# Submission: zip model.py + exported weights (WEIGHTS may list several = ensemble) and
# validate it in a fresh process; TTA=N sets the views, HALF=1 stores float16 weights.
TTA ?=
HALF ?=
SERVER_VENV ?= .venv-server
SERVER_PY := $(SERVER_VENV)/bin/python
CI_TINY := build/ci_tiny

submission: $(INSTALLED)
	$(PY) build_submission.py --weights $(WEIGHTS) $(if $(TTA),--tta $(TTA)) $(if $(filter 1 yes true,$(HALF)),--half)

# The server's versions (requirements-server.txt: TF 2.17, Keras 3.4.1), built once and reused.
$(SERVER_VENV)/.installed: requirements-server.txt
	$(PYTHON) -m venv $(SERVER_VENV)
	$(SERVER_PY) -m pip install --quiet --upgrade pip
	$(SERVER_PY) -m pip install --quiet -r requirements-server.txt
	touch $@

# The same validation, run by the server's versions, plus parity of the probabilities with ours:
# make server-check ZIP=submission/....zip
server-check: $(INSTALLED) $(SERVER_VENV)/.installed
	@test -n "$(ZIP)" || { echo "error: ZIP: no zip given and none in submission/; run make submission or pass ZIP=path" >&2; exit 2; }
	$(PY) build_submission.py --check $(ZIP) --python $(SERVER_PY)

# CI: an untrained tiny model's submission, validated with the server's versions (and parity with ours).
server-check-tiny: $(INSTALLED) $(SERVER_VENV)/.installed
	rm -rf $(CI_TINY)
	$(PY) -m bloodcells.submission --out $(CI_TINY)/export
	$(PY) build_submission.py --weights $(CI_TINY)/export --out $(CI_TINY) --probe-images 16 --python $(SERVER_PY)

# Long measurements: each bench/*.py prints its figures (nothing is asserted).
bench: $(INSTALLED)
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf build runs .pytest_cache
