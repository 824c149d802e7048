# The front door. `make run` trains once; `make test` runs the suite; `make help` lists the rest.
BACKEND    ?= auto
PROFILE    ?=
DATA       ?=
NUM_SHARDS ?= 10
PYTHON     ?= python3

VENV := .venv
PY   := $(VENV)/bin/python
# auto: cuda on an NVIDIA GPU, mlx on Apple silicon, else the PyTorch trainer on the CPU.
RESOLVED := $(if $(filter auto,$(BACKEND)),$(shell $(PYTHON) -c 'from common.platform import auto_backend; print(auto_backend())'),$(BACKEND))
EXTRA    := $(if $(filter dev,$(RESOLVED)),dev,$(RESOLVED))
RUN_ENV  := $(if $(PROFILE),AUTORESEARCH_PROFILE=$(PROFILE)) $(if $(DATA),AUTORESEARCH_DATA=$(abspath $(DATA)))

.PHONY: help setup prepare run test bench bench-gpu clean-venv

help:
	@echo "make run      [BACKEND=auto|cuda|jax|mlx] [PROFILE=h100|gpu|apple|cpu|smoke] [DATA=folder]"
	@echo "make setup    [BACKEND=cuda|jax|mlx|dev]   create .venv with what that backend needs"
	@echo "make prepare  [DATA=folder] [NUM_SHARDS=10] download (or read) data, train the tokenizer"
	@echo "make test                                  the whole suite, on a CPU"
	@echo "make bench                                 CPU benchmarks (pytest-benchmark)"
	@echo "make bench-gpu BACKEND=cuda|jax            GPU benchmark table (on an NVIDIA GPU)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# One stamp per extra, so `make run` installs only what is missing.
$(VENV)/.installed-%: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[$*]"
	touch $@

setup: $(VENV)/.installed-$(EXTRA)

prepare: setup
	$(RUN_ENV) $(PY) -m common.prepare --num-shards $(NUM_SHARDS)

run: setup
	@$(RUN_ENV) $(PY) -m common.prepare --num-shards $(NUM_SHARDS) --if-needed
	$(RUN_ENV) $(PY) backends/$(RESOLVED)/train.py

# The exit status is pytest's, also written to .venv/pytest-exit for .ci/run (make itself exits 2).
test: $(VENV)/.installed-dev
	@$(PY) -m pytest -q -m "not bench" $(PYTEST_ARGS); status=$$?; echo $$status > $(VENV)/pytest-exit; exit $$status

bench: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m bench --benchmark-enable --benchmark-columns=min,median,mean,rounds $(if $(filter-out auto,$(BACKEND)),-k $(BACKEND))

clean-venv:
	rm -rf $(VENV)
