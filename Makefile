# Two commands after cloning: `make run` (the default recipe) and `make test`.
# Each one creates .venv and installs medlite first if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The shared real-data folder when it sits beside the clone; else $MEDLITE_DATA_ROOT or ~/.cache/medlite.
DATA_ROOT ?= $(abspath $(firstword $(wildcard ../shared/data/medmnist)))
RECIPE ?= breastmnist
export MEDLITE_DATA_ROOT ?= $(DATA_ROOT)

.PHONY: setup litert wheel run test bench clean

# requirements.lock pins every transitive dependency (a pip freeze of a working install).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# The LiteRT converter and runtime (export.formats: [onnx, litert]). pip cannot resolve litert-torch
# beside medlite (pyproject.toml says why), so requirements-litert.txt pins the whole set it imports
# and installs it with --no-deps; the import check then fails here, not as skipped .tflite files.
$(VENV)/.litert: $(VENV)/.installed requirements-litert.txt
	$(PY) -m pip install -q --no-deps -r requirements-litert.txt
	$(PY) -c "import sys; from medlite.export.litert import missing_packages; sys.exit(', '.join(missing_packages()) or None)"
	touch $@

litert: $(VENV)/.litert

# A pure-Python wheel (py3-none-any) in dist/, for a device that gets no build tools and no index
# (README, "Deploying with the edge runner"). Built without an isolated environment, with the venv's
# setuptools (the pinned one: installed if missing, e.g. Python 3.12 venvs have none; nothing is
# downloaded when it is there), so it works offline; the setuptools scratch folders are removed.
wheel: $(VENV)/.installed
	$(PY) -m pip install -q -c requirements.lock setuptools
	rm -rf build src/medlite.egg-info
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .
	rm -rf build src/medlite.egg-info
	@ls dist/medlite-*-py3-none-any.whl

run: $(VENV)/.installed
	$(VENV)/bin/medlite run $(RECIPE)

# The suite converts to LiteRT for real (under CI a missing converter fails its tests).
test: $(VENV)/.installed $(VENV)/.litert
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(VENV)/bin/medlite bench runs/$(RECIPE)

clean:
	rm -rf $(VENV) runs dist
