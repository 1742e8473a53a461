# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install
# the project (editable, pinned dependencies) first; the install is skipped when pyproject.toml
# has not changed since the last one.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-fast demo demo-tiny lint cluster-up cluster-down mlflow-ui clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Two xdist workers (each with its own session Ray instance): the suite in ~15 min on 2 cores.
XDIST ?= -n 2 --dist worksteal

test: $(STAMP)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) jobs/demo.py $(DEMO_ARGS)

demo-tiny: $(STAMP)
	$(PY) jobs/demo.py --preset tiny $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check platform jobs tests benchmarks

cluster-up: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash cluster/local_up.sh

cluster-down:
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash cluster/local_down.sh

mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000

clean:
	rm -rf runs mlflow.db mlartifacts demo_output .pytest_cache
