# The two commands of the README:
#   make run    set everything up, then run the default job (python run.py)
#   make test   set everything up, then run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Byte-code caching roughly halves the import time of lightning (about 8 s -> 3 s a process).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup run test test-fast clean

setup: $(STAMP)

# torch first, pinned: its local CPU wheel satisfies the pin; anything looser pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/python run.py $(ARGS)

test: setup
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
