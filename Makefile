# Two commands on a fresh machine: `make demo` (the main job end to end) and `make test` (the whole suite).
# Both create .venv when missing and install what they need. torch comes first and pinned: on this CPU machine
# `pip install torch==2.13.0` takes the CPU wheel already on disk, so nothing pulls a multi-GB CUDA build.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.esccs-installed
TORCH := torch==2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
DEMO ?= demo
DEMO_SAMPLES ?= 2000
DEMO_SIZE ?= 32
DEMO_BENCH_TIME ?= 0.3

.PHONY: demo test install lint bench clean gpu-wheels gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py pyproject.toml | $(BIN)/python
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[train,dev,ray]'
	@$(BIN)/python -c "import torch; print('installed esccs with torch', torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/pytest

demo: $(STAMP)
	@echo "== 1/8 synthetic data ($(DEMO_SAMPLES) samples, $(DEMO_SIZE) px) -> $(DEMO)/data"
	$(BIN)/esccs data synth $(DEMO)/data --samples $(DEMO_SAMPLES) --size $(DEMO_SIZE) --patches-per-scene 20 --overwrite
	$(BIN)/esccs data info $(DEMO)/data
	@echo "== 2/8 quick look"
	$(BIN)/esccs data show $(DEMO)/data --out $(DEMO)/quicklook.png
	@echo "== 3/8 how much each modality tells (probe classifier on held-out target scenes)"
	$(BIN)/esccs data probe $(DEMO)/data --out $(DEMO)/probe.json
	@echo "== 4/8 ESCCS: source -> step 1 (two auxiliaries) -> step 2 (IRM distillation) -> 3 relabelling rounds; and the dual oracle"
	rm -rf $(DEMO)/run
	$(BIN)/esccs train --data $(DEMO)/data --out $(DEMO)/run --method esccs,source-only,sar-only,tlf-late,oracle-dual \
		--config configs/demo.yaml --quiet
	@echo "   (oracle-dual is trained WITH target labels: the upper bound ESCCS is measured against, not a method)"
	$(BIN)/esccs eval $(DEMO)/run/target/model.safetensors --data $(DEMO)/data --out $(DEMO)/eval.json --plots $(DEMO)
	@echo "== 5/8 export: ONNX (parity-checked against torch) and INT8 ONNX"
	$(BIN)/esccs export $(DEMO)/run/target/model.safetensors --format onnx --data $(DEMO)/data --out $(DEMO)/model.onnx
	$(BIN)/esccs export $(DEMO)/run/target/model.safetensors --format onnx-int8 --data $(DEMO)/data --out $(DEMO)/model.int8.onnx
	@echo "== 6/8 inference over the demo tiles with the torch-free runtime (onnxruntime)"
	$(BIN)/esccs infer $(DEMO)/data --model $(DEMO)/model.onnx --out $(DEMO)/predictions.csv --out $(DEMO)/predictions.geojson --overwrite --quiet
	@echo "== 7/8 benchmark: torch eager vs onnxruntime fp32 / INT8, backend-only and esccs infer end to end (short)"
	$(BIN)/esccs benchmark --model $(DEMO)/model.onnx --data $(DEMO)/data \
		--checkpoint $(DEMO)/run/target/model.safetensors --device cpu --batch-sizes 1,32 \
		--min-time $(DEMO_BENCH_TIME) --warmup 0.1 --min-iters 5 --out $(DEMO)/benchmark
	@echo "== 8/8 done: $(DEMO)/quicklook.png, $(DEMO)/run/results/, $(DEMO)/eval.json, $(DEMO)/model.onnx, $(DEMO)/predictions.*, $(DEMO)/benchmark/report.html"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/esccs benchmark synth --samples 2000 --size 128 --out benchmarks/results/synth_cpu.json

# GPU check (issue 15): `make gpu-wheels` here, then on a CUDA machine with the wheels carried: `make gpu-check`
# (8 minutes in all; results in benchmarks/results/gpu_<device>/). Without a GPU, gpu-check says so and exits 0.
GPU_WHEELS ?= .gpu-wheels

gpu-wheels: $(STAMP)
	$(BIN)/python benchmarks/gpu_check_wheels.py --dest $(GPU_WHEELS)

gpu-check:
	@PYTHON=$(PYTHON) bash benchmarks/gpu_check.sh --wheels $(GPU_WHEELS)

clean:
	rm -rf $(VENV) $(DEMO) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
