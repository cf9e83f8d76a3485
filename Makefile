# Everything runs from a virtual environment that this Makefile builds;
# nothing relies on packages installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs

.PHONY: install lab test test-unit check format demo bench-lab clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on built-in defaults.
demo: lab

# Train and evaluate the reference dense autoencoder on the bundled ECG5000.
lab: $(STAMP)
	$(BIN)/beatmon train --data ecg5000 --model dense --out $(RUNS)/dense
	$(BIN)/beatmon evaluate --bundle $(RUNS)/dense

# The whole suite: unit tests, then the integration tests against real services,
# which the test session starts itself (see tests/conftest.py).
test: $(STAMP)
	$(BIN)/pytest -q

test-unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration"

check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench-lab: $(STAMP)
	$(BIN)/python bench/lab.py

clean:
	rm -rf $(VENV) .cache build *.egg-info
