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

.PHONY: install demo test synth clean-data train submission eval leaderboard shift-preview server-check bench clean server-check-tiny

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

# Cleaning: fabricated images, label conflicts, duplicates, near-duplicates; outliers flagged.
# make clean-data DATA=training_set.npz [OUT=...] [REPORT=...] [CLEAN_ARGS="--drop-outliers"]
OUT ?= $(CLEAN)
CLEAN_ARGS ?=
clean-data: $(INSTALLED)
	$(PY) -m bloodcells.clean $(DATA) --out $(OUT) --report $(REPORT) $(CLEAN_ARGS)

# Evaluate a zip like the server: clean and server-like shifted test, scores, figures,
# report.html under submission/eval/<zip>/, a row in submission/leaderboard.csv.
# Optional: SPLIT=val PROFILE="none server sweep" EVAL_ARGS="--time-limit 600 --seed 0".
eval: $(INSTALLED)
	@test -n "$(ZIP)" || { echo "error: ZIP: no submission zip in submission/; run make submission or pass ZIP=path" >&2; exit 2; }
	$(PY) local_eval.py $(ZIP) --data $(TEST) $(if $(SPLIT),--split $(SPLIT)) $(if $(PROFILE),--profile $(PROFILE)) $(EVAL_ARGS)

leaderboard: $(INSTALLED)
	$(PY) local_eval.py --leaderboard

# Grids to look at: clean/shifted pairs (build/shift_preview.png) and every family x severity
# on one image (build/shift_sweep_preview.png). SPLIT=val for MedMNIST files.
shift-preview: $(INSTALLED)
	$(PY) -m bloodcells.shift --data $(TEST) $(if $(SPLIT),--split $(SPLIT)) --profile server --seed $(SEED) \
		--out build/shift_preview.npz --preview build/shift_preview.png --sweep-preview build/shift_sweep_preview.png

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
