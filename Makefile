# Every target creates .venv and installs what it needs, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; a bare "torch" requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
KRONFLUENCE_SPEC ?= kronfluence==1.0.1

.PHONY: demo test ui bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "$(KRONFLUENCE_SPEC)"
	touch $@

demo: venv
	$(VENV)/bin/pretrace demo

test: venv
	$(PY) -m pytest -q -n 2 --durations=25

ui: venv
	$(VENV)/bin/pretrace ui

bench: venv
	$(PY) bench/influence.py
	$(PY) bench/report.py

clean:
	rm -rf $(VENV) data .pytest_cache
