# The README's two commands: `make demo` (the main job, CPU, synthetic data) and `make test`.
# Both create or reuse the virtual environment at .venv in the repository root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.defectnet-installed
DEMO_OUT ?= runs/demo

.PHONY: demo test lint typecheck venv

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# serve: Ray Serve (defectnet-serve), so the test suite runs its tests too.
	$(BIN)/python -m pip install --quiet -e '.[dev,serve]'
	# TensorRT's type stubs only: without --no-deps pip tries to fetch TensorRT itself.
	$(BIN)/python -m pip install --quiet --no-deps tensorrt-stubs==10.13.0.35.1
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/defectnet-demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check defectnet tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy defectnet benchmarks

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q
