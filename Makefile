# make run   -- set up .venv and run the main job on the embedded zoo
# make test  -- set up .venv and run every test (pytest + nbval over the notebooks)
PYTHON ?= python3
VENV ?= .venv
# A CPU build: an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup run test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

run: setup
	$(BIN)/python -m osd_lab $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)
