# Entry points. `make demo` and `make test` work on a fresh machine: each creates
# .venv when missing and installs what the project needs.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODELS ?= models
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
MUTATE_JOBS ?= 2
# Address-space cap (KiB) per mutmut process: a mutant that disables a size check (say, the
# BYTES element count against the payload) then fails with MemoryError instead of letting a
# property test allocate 16 GiB and the kernel OOM-kill whatever else runs on the machine.
MUTATE_MEMORY_KB ?= 8000000

.PHONY: venv system-deps peer-tools protos train serve demo test lint bench loadtest mutate container-test clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,gpu,dev]'
	touch $(STAMP)

# Prometheus (for the metrics test) and docker-compose (to validate the compose file
# without an engine) come from Debian; installed when missing and we are root.
system-deps:
	@scripts/install-system-deps.sh

# Triton's perf_analyzer and PyTriton, the peers the tests and benchmarks compare with, in a
# virtual environment of their own (.venv-peers: they need numpy < 2 and Debian's python3.11).
peer-tools:
	@scripts/install-peer-tools.sh

protos: $(STAMP)
	$(PY) -m protos.generate

train: $(STAMP)
	$(PY) -m training --model all --out $(MODELS)

serve: $(STAMP)
	$(PY) -m serving --model-repository $(MODELS) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

demo: $(STAMP)
	scripts/demo.sh

test: $(STAMP) system-deps peer-tools
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile

# Build the serving and training images and run docker-compose.yml on podman (root; installs
# buildah, podman, docker-compose, ... from Debian when missing). About 10 minutes on 2 cores.
container-test: $(STAMP)
	PY=$(PY) scripts/container_smoke.sh

bench: $(STAMP)
	$(PY) bench/train_speed.py
	$(PY) bench/serve_bench.py

# Mutation testing (mutmut; [tool.mutmut] in pyproject.toml names the modules and tests).
# Not part of `make test`: about 30 minutes on 2 cores. Figures: docs/testing.md.
mutate: $(STAMP)
	rm -rf mutants
	ulimit -v $(MUTATE_MEMORY_KB); HYPOTHESIS_PROFILE=mutation $(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS) || true
	$(PY) scripts/mutation_report.py --equivalent docs/mutation-equivalent.txt

loadtest: $(STAMP)
	$(PY) -m serving.loadtest --target 127.0.0.1:$(GRPC_PORT) --model mlp --concurrency 16 --duration 10

clean:
	rm -rf $(VENV) .venv-peers .pytest_cache .ruff_cache mutants
