# The few commands a contributor needs. Each sets up what is missing first (scripts/setup.sh).
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist: one worker per core; the SLURM tests share one worker (tests/conftest.py). `make test XDIST=` runs serially.
XDIST ?= -n auto --dist loadgroup

.PHONY: setup train test test-fast lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

train: setup  ## the main job: train the default backbone on the bundled sample set
	$(BIN)/python train.py $(ARGS)

test: setup  ## the whole test suite
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup  ## everything but the slow tests
	$(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: setup  ## framework overhead against a hand-written loop (benchmarks/README.md)
	$(BIN)/python benchmarks/framework_overhead.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
