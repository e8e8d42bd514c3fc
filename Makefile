# Every user-facing target creates .venv and installs figkd into it first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow bench bench-speed install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/figkd demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/loss_overhead.py

# Table 14 step times and end-to-end img/s vs a plain loop (~30 min on 2 CPU cores)
bench-speed: $(STAMP)
	$(BIN)/python benchmarks/step_time.py --out benchmarks/results/step_time.md
	$(BIN)/python benchmarks/throughput.py --compile --out benchmarks/results/throughput.md

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
