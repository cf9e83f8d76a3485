# Everything runs from a virtual environment that this Makefile builds;
# nothing relies on packages installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs

.PHONY: install services lab test test-unit faults check format demo bench-lab bench-stream bench-soak bench-poison clean

# PYTHONWARNINGS=ignore: the build backend warns that top-level folders share
# the package names, which is this project's layout, not a problem.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on built-in defaults: Kafka, Mosquitto and Prometheus on this
# machine, the reference model, a minute of replayed beats through the monitor,
# and a summary. KEEP=1 leaves it all running.
demo: $(STAMP)
	scripts/demo

# Train and evaluate the reference dense autoencoder on the bundled ECG5000.
lab: $(STAMP)
	$(BIN)/beatmon train --data ecg5000 --model dense --out $(RUNS)/dense
	$(BIN)/beatmon evaluate --bundle $(RUNS)/dense

# The programs the integration tests run: Kafka from Maven Central, Mosquitto
# and Prometheus from Debian (installed with apt-get when missing, as root).
services:
	scripts/kafka fetch
	scripts/mosquitto install
	scripts/prometheus install

# The whole suite: unit tests, then the integration tests against the real
# services, which the test session starts itself (see tests/conftest.py).
test: $(STAMP) services
	$(BIN)/pytest -q

test-unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration"

# The fault matrix alone (tests/faults, about 3.5 minutes): the monitor killed
# and restarted, Kafka and Mosquitto stopped mid-stream, monitors leaving and
# joining, damaged bundles and a full disk; it ends with a summary table,
# also written to runs/faults/fault-matrix.md. `make test` runs it too.
faults: $(STAMP) services
	$(BIN)/pytest -q -m faults

check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench-lab: $(STAMP)
	$(BIN)/python bench/lab.py

bench-stream: $(STAMP)
	$(BIN)/python bench/stream.py

# About 15 minutes: a rate ramp to find where the monitor falls behind, then
# ten minutes at 10,000 beats/s.
bench-soak: $(STAMP)
	$(BIN)/python bench/soak.py

# A few minutes: the monitor on 50,000 valid beats alone, then on the same
# beats with 50,000 malformed messages among them.
bench-poison: $(STAMP)
	$(BIN)/python bench/poison.py

clean:
	rm -rf $(VENV) .cache build *.egg-info
