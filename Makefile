# `make run` and `make test` do the whole set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run config paper plan test test-slow clean-state

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Stage commands call `python`: the venv's bin goes first on PATH.
run: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro

# A configuration (configs/$(CONFIG).yaml) becomes params.yaml, then the pipeline runs: `make config
# CONFIG=toy` is the 2-D toy run; for a paper configuration do it on a branch of its own, e.g.
# `git checkout -b cifar10-uncond && make config CONFIG=cifar10-uncond`. `make paper` is the same target.
config paper: $(STAMP)
	@test -n "$(CONFIG)" -a -f "configs/$(CONFIG).yaml" || { echo "usage: make $@ CONFIG=<name of a file in configs/>"; exit 2; }
	cp "configs/$(CONFIG).yaml" params.yaml
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro

# What the run of params.yaml will cost, measured on this machine: wall time, peak memory, GPU-hours and
# Slurm requests per stage. `make plan PLAN_ARGS="--json"`; `--slurm-resources plan.json` sizes the profile.
plan: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m realuid.plan $(PLAN_ARGS)

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q

test-slow: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -m slow

clean-state:
	rm -rf state
