# The two commands of the README. Both create .venv when it is missing and install facerco into it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Tests may run in parallel; CI sets CI=true, which also runs the real-data tests when ../shared/data is there.
PYTEST_ARGS ?= -n 2 -m "not slow"

.PHONY: install install-dev demo test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e .

install-dev: $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev,align]"

demo: install
	$(BIN)/facerco demo --out demo_out

test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: install-dev
	$(BIN)/ruff check .
