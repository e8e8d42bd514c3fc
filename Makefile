# Every user-facing target creates .venv and installs figkd into it first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint typecheck bench bench-speed mutate install clean

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

# ruff on the package, tests, benchmarks and tools; pinned, since a newer ruff enables more rules by default (CI runs it)
RUFF := ruff==0.17.6
lint: $(STAMP)
	$(BIN)/python -m pip install --quiet "$(RUFF)"
	$(BIN)/python -m ruff check src tests benchmarks tools

# mypy on the package and tools, then benchmarks, then tests (module names they share: three
# runs; tests' bodies are checked but their helpers and test functions need no annotations);
# pinned with the stubs it reads (config in pyproject.toml; CI runs it)
MYPY := mypy==2.4.1 types-PyYAML==6.0.12.20261122 types-tqdm==4.70.0.20261106
typecheck: $(STAMP)
	$(BIN)/python -m pip install --quiet $(MYPY)
	$(BIN)/python -m mypy
	$(BIN)/python -m mypy benchmarks
	$(BIN)/python -m mypy tests --allow-untyped-defs --allow-incomplete-defs --allow-any-generics

# each target rewrites the files README's Speed table cites, with the commands recorded in them
bench: $(STAMP)
	$(BIN)/python benchmarks/loss_overhead.py --output benchmarks/results/loss_overhead.md

# Table 14 step times and end-to-end img/s vs a plain loop (~40 min on 2 CPU cores)
bench-speed: $(STAMP)
	$(BIN)/python benchmarks/step_time.py --rounds 6 --steps 3 --out benchmarks/results/step_time.md
	$(BIN)/python benchmarks/throughput.py --per-class 20 --rounds 2 --compile --out benchmarks/results/throughput.md
	$(BIN)/python benchmarks/throughput.py --per-class 20 --rounds 2 --student compile \
		--skip-switches --out benchmarks/results/throughput_compile.md
	$(BIN)/python benchmarks/mlkd_step.py --out benchmarks/results/mlkd_step.md
	$(BIN)/python benchmarks/strong_view.py --out benchmarks/results/strong_view.md
	$(BIN)/python benchmarks/aten_calls.py --out benchmarks/results/aten_calls.md

# do the tests notice a changed operator or constant? e.g.
#   make mutate MODULE=src/figkd/losses/dkd.py TESTS="tests/test_losses_baselines.py -k dkd"
MUTATE_FLAGS ?= --fork
mutate: $(STAMP)
	$(BIN)/python tools/mutation.py $(MUTATE_FLAGS) $(MODULE) $(TESTS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
