# The README's two commands: `make demo` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint format clean registers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -c "import mpnn_jax"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python experiments/demo.py

# one pytest-xdist worker per core (at most 4), a test file per worker at a time (module
# fixtures built once); on 2 cores 1.5x faster than one process
XDIST := -n auto --maxprocesses 4 --dist loadfile

test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "" $(XDIST)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# registers, spills and occupancy of the pallas kernels for an H100, on any machine (no GPU):
# the `triton` package (its compiler and ptxas) in a virtual environment of its own
TRITON_VENV := .venv-triton
$(TRITON_VENV)/bin/python:
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet triton

registers: $(STAMP) | $(TRITON_VENV)/bin/python
	$(BIN)/python experiments/perf/kernel_registers.py --triton-python $(TRITON_VENV)/bin/python \
		--out registers.json $(ARGS)

clean:
	rm -rf $(VENV) $(TRITON_VENV) .pytest_cache .ruff_cache
