# Two commands for a new user: `make demo` and `make test`. Both create or reuse .venv; the demo
# installs the package alone, the tests add the test extras (pytest, ruff, hypothesis, onnx).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ulfine-installed
TEST_STAMP := $(VENV)/.ulfine-test-installed
PIP := $(PY) -m pip install -q --disable-pip-version-check -c requirements/constraints.txt
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test test-fast lint bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[test]'
	@touch $(TEST_STAMP)

setup: $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/ulfine demo

test: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .

test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/perf.py

clean:
	rm -rf runs reports .pytest_cache .cache
