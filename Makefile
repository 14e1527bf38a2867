# IRKD: `make exp1a`, `make test`. Variables: DATA (CIFAR-10 root), DEVICE (auto, cpu,
# cuda, mps), QUICK=1 (the few-minute smoke path), ARGS (any --field=value overrides).
PYTHON ?= python3
VENV   ?= .venv
DATA   ?= data
DEVICE ?= auto
QUICK  ?= 0
ARGS   ?=
# plots: every run directory with a log (override: make plots RUNS="runs/exp1a runs/exp1b")
RUNS   ?= $(patsubst %/log.jsonl,%,$(wildcard runs/*/log.jsonl runs/quick/*/log.jsonl))

PY    := $(VENV)/bin/python
FLAGS := --data=$(DATA) --device=$(DEVICE) $(if $(filter 1 true yes,$(QUICK)),--quick) $(ARGS)
VARIANTS := exp1a exp1b saliency_p2 small_p4_all kdonly table beyond original study

.PHONY: setup test list teacher plots study_plots report bench $(VARIANTS)

# The virtual environment, re-made whenever requirements.txt changes.
$(VENV)/.installed: requirements.txt
	@echo "building $(VENV)/ with $$(tr '\n' ' ' < requirements.txt)(a minute or two, once)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@
	@echo "$(VENV)/ is ready: run python commands as $(VENV)/bin/python, or after source $(VENV)/bin/activate"

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q tests

list: setup
	$(PY) experiments.py list

# Every named variant and the whole table, e.g. `make exp1b QUICK=1 ARGS=--seed=1`.
$(VARIANTS): setup
	$(PY) experiments.py $@ $(FLAGS)

teacher: setup
	$(PY) teacher.py $(FLAGS)

# Figures for the runs in RUNS, written to figures/ beside the first one.
plots: setup
	$(PY) plots.py $(RUNS)

# The controlled study's figures, from the runs committed in results/study/.
study_plots: setup
	$(PY) plots.py $(patsubst %/log.jsonl,%,$(wildcard results/study/*/log.jsonl)) --out docs/figures/study

# runs/*/results.json -> a Markdown table, paper vs ours (runs/report.md); and the study's
# arms and paired comparisons from results/study/ (results/study/report.md, and the generated
# block of docs/study.md).
report: setup
	$(PY) study.py --readme

# Speed: images/s per preset, mode and resolution, pipeline overhead, curriculum cost, FLOP/s.
bench: setup
	$(PY) bench.py --device=$(DEVICE) $(ARGS)
