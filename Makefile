# Every target creates .venv and installs what it needs, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; a bare "torch" requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
KRONFLUENCE_SPEC ?= kronfluence==1.0.1
# bergson (the other peer, bench/bergson_peer.py) declares torchvision, torchaudio and
# bitsandbytes, which would pull a CUDA build of torch: it goes in without its dependencies,
# beside the packages it really imports (measured: importing bergson and running its EK-FAC).
BERGSON_SPEC ?= bergson==2.5.1 datasets==5.2.0 multiprocess==0.70.19 dill==0.4.1 pandas==3.1.1 xxhash==4.1.0 \
	simple-parsing==0.1.9 ml_dtypes==0.6.0 petname==2.9 jaxtyping==0.3.11 peft==0.21.2

.PHONY: demo test lint format docs ui bench venv clean lock

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "$(KRONFLUENCE_SPEC)"
	$(PY) -m pip install -q --no-deps $(BERGSON_SPEC)
	touch $@

demo: venv
	$(VENV)/bin/pretrace demo

test: lint
	$(PY) -m pytest -q -n 2 --durations=25

lint: venv
	$(VENV)/bin/ruff check -q .
	$(VENV)/bin/ruff format --check -q .

format: venv
	$(VENV)/bin/ruff check -q --fix .
	$(VENV)/bin/ruff format -q .

# docs/configuration.md is generated from the settings schema; the site builds strictly into site/.
docs: venv
	$(PY) -c "from pretrace.config import reference_markdown; open('docs/configuration.md', 'w').write(reference_markdown())"
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

ui: venv
	$(VENV)/bin/pretrace ui

bench: venv
	$(PY) -m bench.influence
	$(PY) -m bench.report

clean:
	rm -rf $(VENV) data site .pytest_cache

# infra/requirements.lock: every package of the deployment image at one version, resolved by uv
# from PyPI (pyproject.toml plus infra/requirements.in); outside .venv, which it leaves alone.
lock:
	PYTHON=$(PYTHON) sh infra/lock.sh
