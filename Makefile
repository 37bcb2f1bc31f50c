# The two commands of the README. Both create .venv when it is missing and install facerco into it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Tests run on 2 workers. By default the slow tests are left out (~1.5 min on 2 idle cores); CI sets CI=true and
# runs them too (~2 min more). Real-data tests run whenever ../shared/data (or FACERCO_REAL_DATA) is there.
ifeq ($(CI),true)
PYTEST_ARGS ?= -n 2
else
PYTEST_ARGS ?= -n 2 -m "not slow"
endif

.PHONY: install install-dev demo test lint wheel-demo

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

# What `pip install facerco` (not editable) gives: a wheel in a fresh venv runs `facerco demo --quick` outside the
# source tree (CI runs it after the tests).
wheel-demo: install-dev
	VENV=$(VENV) bash .ci/wheel_demo
