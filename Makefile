# The front door. `make run` trains once; `make test` runs the suite; `make help` lists the rest.
BACKEND    ?= auto
PROFILE    ?=
BUDGET     ?=
DATA       ?=
NUM_SHARDS ?= 10
PYTHON     ?= python3

VENV := .venv
PY   := $(VENV)/bin/python
# auto: cuda on an NVIDIA GPU, mlx on Apple silicon, else the PyTorch trainer on the CPU.
RESOLVED := $(if $(filter auto,$(BACKEND)),$(shell $(PYTHON) -c 'from common.platform import auto_backend; print(auto_backend())'),$(BACKEND))
EXTRA    := $(if $(filter dev,$(RESOLVED)),dev,$(RESOLVED))
# BUDGET=60 replaces the profile's training budget for measurement; results record it as e.g. h100@60s.
RUN_ENV  := $(if $(PROFILE),AUTORESEARCH_PROFILE=$(PROFILE)) $(if $(BUDGET),AUTORESEARCH_BUDGET=$(BUDGET)) $(if $(DATA),AUTORESEARCH_DATA=$(abspath $(DATA)))

# The agent
PROPOSER        ?= auto
TAG             ?=
MAX_EXPERIMENTS ?=
NOISE_RUNS      ?= 5
AGENT_ARGS      ?=

# Docker: BACKEND=cuda builds/runs the GPU image, anything else the CPU image (auto: cuda where a GPU is).
DOCKER_IMAGE := $(if $(filter cuda,$(BACKEND)),cuda,$(if $(filter auto,$(BACKEND)),$(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu),cpu))
TRAINER  ?= cuda
RUNS     ?= 1
OFFLINE  ?= 0
BASE_IMAGE ?=

.PHONY: help setup prepare run test bench bench-gpu bench-anchor agent noise report clean-venv docker-wheelhouse docker-build docker-run reproduce

help:
	@echo "make run      [BACKEND=auto|cuda|jax|mlx] [PROFILE=h100|gpu|apple|cpu|smoke] [BUDGET=seconds] [DATA=folder]"
	@echo "make setup    [BACKEND=cuda|jax|mlx|dev]   create .venv with what that backend needs"
	@echo "make prepare  [DATA=folder] [NUM_SHARDS=10] download (or read) data, train the tokenizer"
	@echo "make agent  [BACKEND=...] [PROPOSER=auto|offline|anthropic|openai|command] [TAG=nov26] [MAX_EXPERIMENTS=N] [GPUS=0,1|all] [AGENT_ARGS='--deadline 07:00 --confirm 2 --resume ...']   the overnight loop"
	@echo "make noise  [BACKEND=...] [NOISE_RUNS=5] [TAG=...]   the baseline's run-to-run spread (run it before the agent)"
	@echo "make report [TAG=...]   runs/<tag>/progress.png and report.md (default: the latest run)"
	@echo "make test                                  the whole suite, on a CPU"
	@echo "make bench                                 CPU benchmarks (pytest-benchmark)"
	@echo "make bench-gpu BACKEND=cuda|jax            GPU benchmark table (on an NVIDIA GPU)"
	@echo "make bench-anchor [BACKEND=cuda|jax] [BUDGET=60] [REPEAT=3] [GPUS=0,1] [DATA=folder] [UPSTREAM=dir] [ANCHOR_ARGS=...]   upstream's train.py beside ours, one table"
	@echo "make docker-wheelhouse [BACKEND=cuda|cpu]   pip download the image's wheels into docker/wheelhouse (cuda: refuses a CPU-only torch)"
	@echo "make docker-build [BACKEND=cuda|cpu] [BASE_IMAGE=img] [OFFLINE=1]   build the image (cuda: fails if its torch has no CUDA)"
	@echo "make docker-run   [BACKEND=cuda|cpu] [TRAINER=cuda|jax|mlx] [PROFILE=...] [DATA=folder]   train once in it"
	@echo "make reproduce COMMIT=<sha> [RUNS=k] [DATA=folder]   re-run a logged result in a container"

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
	$(RUN_ENV) $(PY) -m common.run --backend $(RESOLVED) --num-shards $(NUM_SHARDS)

# The exit status is pytest's, also written to .venv/pytest-exit for .ci/run (make itself exits 2).
agent: setup $(VENV)/.installed-agent
	@$(RUN_ENV) $(PY) -m common.prepare --num-shards $(NUM_SHARDS) --if-needed
	$(RUN_ENV) $(PY) -m agent run --backend $(RESOLVED) --proposer $(PROPOSER) $(if $(TAG),--tag $(TAG)) $(if $(MAX_EXPERIMENTS),--max-experiments $(MAX_EXPERIMENTS)) $(if $(filter-out file default undefined,$(origin GPUS)),--gpus $(GPUS)) $(AGENT_ARGS)

noise: setup
	@$(RUN_ENV) $(PY) -m common.prepare --num-shards $(NUM_SHARDS) --if-needed
	$(RUN_ENV) $(PY) -m agent noise --backend $(RESOLVED) --runs $(NOISE_RUNS) $(if $(TAG),--tag $(TAG))

report: $(VENV)/.installed-agent
	$(PY) -m agent report $(if $(TAG),--tag $(TAG))

test: $(VENV)/.installed-dev
	@$(PY) -m pytest -q -m "not bench" $(PYTEST_ARGS); status=$$?; echo $$status > $(VENV)/pytest-exit; exit $$status

bench: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m bench --benchmark-enable --benchmark-columns=min,median,mean,rounds $(if $(filter-out auto,$(BACKEND)),-k $(BACKEND))

# cuda: requirements-cuda.txt asks for torch==X,!=X+cpu (PyPI's Linux wheel, built with CUDA), then the check
# refuses a wheelhouse that still has no CUDA torch (e.g. filled on a Mac).
docker-wheelhouse: $(VENV)/.installed-dev
	$(PY) -m pip download --quiet --dest docker/wheelhouse -r docker/requirements-$(DOCKER_IMAGE).txt
	$(if $(filter cuda,$(DOCKER_IMAGE)),$(PY) -m agent.container check-wheelhouse)

docker-build: $(VENV)/.installed-dev
	$(PY) -m agent.container build --image $(DOCKER_IMAGE) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(if $(filter 1,$(OFFLINE)),--offline)

docker-run: $(VENV)/.installed-dev
	$(RUN_ENV) $(PY) -m agent.container run --image $(DOCKER_IMAGE) --backend $(TRAINER) $(if $(PROFILE),--profile $(PROFILE)) $(if $(DATA),--data $(abspath $(DATA)))

reproduce: $(VENV)/.installed-dev
	$(RUN_ENV) $(PY) -m agent.container reproduce --commit $(COMMIT) --runs $(RUNS) $(if $(DATA),--data $(abspath $(DATA)))

# GPU benchmark table (on an NVIDIA GPU); BACKEND=jax also runs cuda beside it, for the comparison.
# BENCH_ARGS e.g. "--budget 0 --repeat 1" (0: the profile's full 300 s).
# Uses .venv where it exists, else python3 (a GPU machine with torch/jax already installed).
BENCH_ARGS ?=
BENCH_PY   := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
bench-gpu:
	$(RUN_ENV) PYTHONPATH=$(CURDIR) $(BENCH_PY) bench/gpu.py --backend $(RESOLVED) $(BENCH_ARGS)
	$(if $(filter jax,$(RESOLVED)),$(RUN_ENV) PYTHONPATH=$(CURDIR) $(BENCH_PY) bench/gpu.py --backend cuda $(BENCH_ARGS))

# Upstream autoresearch's own train.py beside one of our backends (bench/anchor.py): same data, same budget,
# side by side on two GPUs when GPUS names two. Upstream is fetched into .upstream/ (git-ignored), or UPSTREAM=dir.
GPUS     ?= 0
REPEAT   ?= 3
UPSTREAM ?=
ANCHOR_ARGS ?=
bench-anchor:
	$(RUN_ENV) PYTHONPATH=$(CURDIR) $(BENCH_PY) bench/anchor.py \
	  --backend $(if $(filter jax,$(RESOLVED)),jax,cuda) $(if $(PROFILE),--profile $(PROFILE)) --budget $(or $(BUDGET),60) \
	  --repeat $(REPEAT) --gpus $(GPUS) $(if $(UPSTREAM),--upstream $(abspath $(UPSTREAM))) $(ANCHOR_ARGS)

clean-venv:
	rm -rf $(VENV)
