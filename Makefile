# make run       -- set up .venv and run the main job on the embedded zoo
# make test      -- set up .venv and run every test (pytest + nbval over the notebooks)
# make test-min  -- exactness and dashboard tests on the lowest transformers and
#                   ipywidgets that pyproject.toml allows
PYTHON ?= python3
VENV ?= .venv
MIN_VENV ?= .venv-min
# A CPU build: an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# The lower bounds of pyproject.toml's transformers, ipywidgets and peft ranges, pinned.
LOWEST := $(shell sed -n 's/^ *"\(transformers\|ipywidgets\|peft\)>=\([0-9.]*\).*/\1==\2/p' pyproject.toml)
BIN := $(VENV)/bin

.PHONY: setup run test test-min
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

$(MIN_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(MIN_VENV)/bin/python -m pip install --quiet -e . $(LOWEST) "pytest>=8"
	touch $@

run: setup
	$(BIN)/python -m osd_lab $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

# No nbval there: the notebook options in pyproject.toml are switched off.
test-min: $(MIN_VENV)/.installed
	$(MIN_VENV)/bin/python -m pytest tests -m "exactness or widgets" -o addopts="" -p no:cacheprovider $(ARGS)
