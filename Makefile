# One command to set up and run the demo, one to set up and run the tests (see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# MovieLens-100k ships inside recbole; only its data file is used, so none of its dependencies.
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt recbole
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/streamrec demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy .

test: lint
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python bench/quality_rsc15.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
