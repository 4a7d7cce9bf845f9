# README command 1: `make demo`; command 2: `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= shapes_gfl_r18.yaml

.PHONY: demo test install clean

$(VENV)/installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/installed

demo: install
	$(PY) train.py --config $(CONFIG)

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf work_dirs datasets/shapes .pytest_cache
