# medray: `make demo` runs the main job end to end; `make test` runs the whole suite.
# Both create .venv and install the pinned dependencies first (nothing to do by hand).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medray-installed
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export NO_ALBUMENTATIONS_UPDATE := 1
export AWS_EC2_METADATA_DISABLED := true
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/medray demo $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(ARGS)

bench: setup
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) medray-data .pytest_cache
