# The two commands of the README:
#   make run    set everything up, then run the default job (python run.py)
#   make test   set everything up, then run the whole test suite
#
# Everything installs from the lock .ci/constraints.txt, the exact set CI tests (pyproject.toml
# declares only ranges), with the Python that lock is tested on, 3.11. The first of these creates
# .venv/: $(PYTHON) when given on the command line (make run PYTHON=/opt/py311/bin/python3; any
# Python >= 3.11 is accepted there, though only 3.11 is tested), else python3.11, else python3 when
# it is 3.11, else uv (which fetches a 3.11). Otherwise setup stops and says what to install.
# torch: PyPI's Linux wheel is the CUDA build; for a CPU-only install
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := .ci/constraints.txt
TORCH_INDEX ?=

IS_PY311 = $(shell command -v $(1) >/dev/null 2>&1 && $(1) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1 && echo $(1))
IS_PY_SUPPORTED = $(shell command -v $(1) >/dev/null 2>&1 && $(1) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' >/dev/null 2>&1 && echo $(1))
ifdef PYTHON
  PY311 := $(call IS_PY_SUPPORTED,$(PYTHON))
  ifeq ($(PY311),)
    $(error PYTHON=$(PYTHON) is not a Python >= 3.11 (lopt requires 3.11 or newer; 3.11 is the tested one): point PYTHON at a python3.11)
  endif
else
  PY311 := $(or $(call IS_PY311,python3.11),$(call IS_PY311,python3))
endif
UV := $(if $(PY311),,$(shell command -v uv 2>/dev/null))
NO_PYTHON := lopt is tested on Python 3.11, and neither python3.11 nor a python3 of version 3.11 nor uv is on PATH. \
Install one of them: python3.11 (Debian/Ubuntu: apt install python3.11 python3.11-venv; macOS: brew install python@3.11; \
or conda create -n lopt python=3.11), or uv (https://docs.astral.sh/uv/), or name one: make run PYTHON=/path/to/python3.11

ifneq ($(PY311),)
  MAKE_VENV := $(PY311) -m venv $(VENV) && $(BIN)/python -m pip install --quiet --upgrade pip
  PIP       := $(BIN)/python -m pip install --quiet
else ifneq ($(UV),)
  MAKE_VENV := $(UV) venv --quiet --python 3.11 $(VENV)
  PIP       := $(UV) pip install --quiet --python $(BIN)/python
endif
# An extra index: torch==2.13.0 then resolves to that index's build (2.13.0+cpu sorts above PyPI's
# 2.13.0), while torch's own dependencies keep their locked versions from the default index.
TORCH_FLAGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

# Byte-code caching roughly halves the import time of lightning (about 8 s -> 3 s a process).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup run test test-fast lint wheel-check clean which-python

setup: $(STAMP)

# torch first, at its locked version (from TORCH_INDEX when given), then lopt and its dev tools,
# every package at its locked version.
$(STAMP): pyproject.toml $(LOCK)
	@$(if $(MAKE_VENV),true,echo "$(NO_PYTHON)" >&2; exit 1)
	$(MAKE_VENV)
	$(PIP) $(TORCH_FLAGS) -c $(LOCK) torch
	$(PIP) -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

# Which interpreter setup would use (the Makefile's own test reads it).
which-python:
	@echo "$(if $(PY311),$(PY311),$(if $(UV),uv $(UV),none))"

run: setup
	$(BIN)/python run.py $(ARGS)

test: setup
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff (configured in pyproject.toml): lint and formatting, as CI checks them.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The wheel in a fresh venv outside the repository: lopt train and lopt recommend from it
# (tests/test_packaging.py runs the same script within make test).
wheel-check: setup
	PYTHON=$(abspath $(BIN)/python) TORCH_INDEX=$(TORCH_INDEX) .ci/wheel_check.sh

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
