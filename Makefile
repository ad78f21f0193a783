# Two commands after cloning: `make run` (the default recipe) and `make test`.
# Each one creates .venv and installs medlite first if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The shared real-data folder when it sits beside the clone; else $MEDLITE_DATA_ROOT or ~/.cache/medlite.
DATA_ROOT ?= $(abspath $(firstword $(wildcard ../shared/data/medmnist)))
RECIPE ?= breastmnist
export MEDLITE_DATA_ROOT ?= $(DATA_ROOT)

.PHONY: setup run test bench clean

# requirements.lock pins every transitive dependency (a pip freeze of a working install).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[test]"
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/medlite run $(RECIPE)

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(VENV)/bin/medlite bench runs/$(RECIPE)

clean:
	rm -rf $(VENV) runs
