# seekline — `make help` lists the targets. `make run` and `make test` set up .venv first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= tiny
ARGS   ?=
MODEL  ?=
CRON   ?=
IMAGE  ?= ghcr.io/seekline/seekline:latest
REF_VENV ?= .venv-ref
# Python 3.10 (TFX 1.16 needs < 3.11): PATH first, then pyenv's installs.
PY310  ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10 /usr/local/bin/python3.10 /usr/bin/python3.10; do \
            if $$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; then echo $$p; break; fi; done)

export TF_CPP_MIN_LOG_LEVEL ?= 3
export PYTHONWARNINGS ?= ignore::FutureWarning

.PHONY: help setup ops ops-if-compiler setup-ref fixtures run test test-fast lint compile deploy-pipeline schedule serve bench docker-build lock clean

help: ## show this help
	@# bold target names on a terminal only: a pipe or a log file gets no escape codes
	@if [ -t 1 ]; then bold=$$'\033[1m'; plain=$$'\033[0m'; else bold=; plain=; fi; \
	  awk -v b="$$bold" -v p="$$plain" 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %s%-16s%s %s\n", b, $$1, p, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: CONFIG=$(CONFIG) (preset or YAML), ARGS='--set key=value ...', KFP_HOST, KFP_TOKEN, CRON"

setup: $(STAMP) ## create .venv with Python 3.10 and the locked dependencies (re-runs only when the lock changes)

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PY310)" || { echo "error: python3.10 not found (TFX 1.16 needs Python 3.10; pyenv install 3.10)"; exit 1; }
	@test -x $(BIN)/python || $(PY310) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' --config-settings editable_mode=compat
	@touch $(STAMP)

# Custom ops (model/ops): C++ CPU kernels, plus CUDA kernels when nvcc is found. Without a
# compiler everything runs on the pure-TF fallback. Rebuilds only when sources or TF changed.
ops: setup ## build seekline's custom C++/CUDA ops into model/ops/_build (ARGS='--force', '--no-gpu')
	$(BIN)/python -m model.ops.build $(ARGS)

ops-if-compiler: setup
	@$(BIN)/python -m model.ops.build --if-compiler

run: setup ops-if-compiler ## run the whole pipeline locally on the tiny preset (outputs/tiny/)
	$(BIN)/seekline run --config $(CONFIG) $(ARGS)
	$(BIN)/seekline runs --config $(CONFIG) -n 3

# The suite spends most of its time in single-threaded Python + small TF ops (CPU time ~= wall
# time in one process), so one pytest-xdist worker per core (at most 4) nearly divides it. Whole
# files go to one worker (--dist loadfile): their module fixtures (trained models) are built once;
# files start in collection order (--no-loadscope-reorder; tests/ first: its end-to-end files are
# the longest, so they start first).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

test: setup ops-if-compiler ## run every test (unit, integration, end-to-end; TEST_WORKERS=N processes)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

test-fast: setup ops-if-compiler ## run the tests not marked slow
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" $(ARGS)

lint: setup ## ruff + Helm chart lint (Helm's Go library through helm-python-sdk)
	$(BIN)/ruff check .
	$(BIN)/python -c "from helm_python import chart; r = chart.lint('infra/helm/seekline', strict=True); \
	  bad = r['errors'] + [m['error'] for m in r['messages'] if m['severity'] >= 2]; print('helm lint:', bad or 'ok'); raise SystemExit(1 if bad else 0)"

compile: setup ## compile the Kubeflow PipelineSpec YAML (kubeflow.output_file, default build/pipeline.yaml)
	$(BIN)/seekline compile --config $(CONFIG) $(ARGS)

deploy-pipeline: setup ## upload to Kubeflow Pipelines at KFP_HOST and start a run
	$(BIN)/seekline deploy --config $(CONFIG) $(ARGS)

schedule: setup ## create a recurring run on KFP_HOST (CRON='0 0 3 * * *', 6 fields, seconds first)
	$(BIN)/seekline schedule --config $(CONFIG) $(if $(CRON),--cron "$(CRON)") $(ARGS)

serve: setup ## serve MODEL (default: the newest blessed model of CONFIG's local pipeline) over an OpenAI-compatible API
	$(BIN)/seekline serve $(MODEL) --config $(CONFIG) $(ARGS)

# The reference venv: transformers + torch (CPU) for HF parity fixtures and benchmark baselines.
# Python 3.11 (torch 2.13's CPU wheel); never used by the tests or the pipeline.
PY311  ?= $(shell for p in python3.11 $$HOME/.pyenv/versions/3.11*/bin/python3.11 /usr/bin/python3.11; do \
            if $$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; then echo $$p; break; fi; done)

setup-ref: $(REF_VENV)/.installed ## create .venv-ref (Python 3.11, torch CPU, transformers) for fixtures and bench baselines

$(REF_VENV)/.installed: Makefile
	@test -n "$(PY311)" || { echo "error: python3.11 not found (needed for the transformers reference venv)"; exit 1; }
	@test -x $(REF_VENV)/bin/python || $(PY311) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install --quiet torch==2.13.0 transformers==5.23.0 safetensors==0.8.0 numpy==2.4.6
	@touch $@

fixtures: setup setup-ref ## regenerate the HF reference fixtures in tests/fixtures/hf (transformers, random weights)
	$(REF_VENV)/bin/python scripts/make_hf_fixtures.py

bench: setup setup-ref ## run the benchmarks in bench/ (each prints a ratio against a reference measured in the same run)
	@shopt -s nullglob; files=(); for f in bench/bench_*.py; do [[ $$f == *_test.py ]] || files+=("$$f"); done; \
	  if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks yet"; fi; \
	  for f in "$${files[@]}"; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

docker-build: ## build the image the compiled pipeline runs (needs a Docker engine; GPU=1: with CUDA)
	docker build -f infra/docker/Dockerfile --build-arg GPU=$(or $(GPU),0) -t $(IMAGE) .

lock: ## regenerate constraints.txt from the current .venv
	@{ echo "# Full transitive lock of the .venv (Python 3.10, Linux x86_64), regenerated by \`make lock\`."; \
	   echo "# Installs use it as pip constraints: \`pip install -c constraints.txt -e .[dev]\`."; \
	   $(BIN)/python -m pip freeze --exclude-editable | grep -v '^seekline'; } > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt

clean: ## remove run outputs and build files (keeps .venv)
	rm -rf outputs build .pytest_cache .ruff_cache
