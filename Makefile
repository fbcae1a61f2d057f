# The README's commands. `make demo` and `make test` each do the whole set-up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_ROOT ?= data
DEMO_OUT ?= runs/demo

.PHONY: setup data demo test lint typecheck unit check-core triton-server benchmark-fashion-mnist benchmark-peer benchmark-curve benchmark-cuda benchmark-speed benchmark-serve benchmark-serve-ray clean

# The C++ training kernels (src/googlenet/kernels) build once per environment and source; without a compiler
# this says so and training uses ATen.
setup: $(STAMP)
	@$(BIN)/python -m googlenet.kernels build --quiet

# pyproject.toml gives lower bounds; constraints.txt pins every version set-up installs, torch and torchvision
# among them. The dev environment has every extra.
CONSTRAINTS := constraints.txt
# torch's x86_64 build brings CUDA libraries: a new environment takes about 6.5 GB, so say so before pip runs out of room.
NEED_KB := 7000000

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || { free_kb=$$(df -Pk $(dir $(abspath $(VENV))) | awk 'NR==2 {print $$4}'); \
		[ "$$free_kb" -ge $(NEED_KB) ] \
		|| { echo "setup needs about 7 GB free disk for $(VENV) (torch with its CUDA libraries); only $$((free_kb / 1048576)) GB free" >&2; exit 1; }; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all,dev]" -c $(CONSTRAINTS)
	touch $(STAMP)

# Real Fashion-MNIST: Debian's package where apt is available, else torchvision's download.
data: setup
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
		echo "Fashion-MNIST: using Debian's dataset-fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) \
		|| echo "apt-get could not install dataset-fashion-mnist; torchvision will try to download it"; \
	else \
		echo "no apt-get (or not root): torchvision will try to download Fashion-MNIST"; \
	fi
	$(BIN)/googlenet data prepare --root $(DATA_ROOT)

# About 11 minutes on 2 CPU cores: the 10-minute preset on real Fashion-MNIST (it plans itself to the budget on
# this machine), the official test set with flip test-time augmentation, then the report and a look inside.
demo: data
	rm -rf $(DEMO_OUT)
	$(BIN)/googlenet train --config configs/fashion-mnist-10min.toml --out $(DEMO_OUT)
	$(BIN)/googlenet evaluate $(DEMO_OUT)/checkpoints/best.pt --split test --tta flip --backend torch --precision bf16
	$(BIN)/googlenet report $(DEMO_OUT)

lint: setup
	$(BIN)/ruff check src tests hubconf.py
	$(BIN)/ruff format --check src tests hubconf.py
	$(BIN)/lint-imports --no-cache

typecheck: setup
	$(BIN)/mypy

unit: data
	$(BIN)/python -m pytest

test: lint typecheck unit

# A real Triton server for the test that serves an exported model repository (tests/test_triton.py skips it
# where this is absent): the tritonserver nvidia-pytriton bundles, about 300 MB in $(VENV)/triton.
triton-server: setup
	PYTHON=$(BIN)/python bash .ci/triton-server $(VENV)/triton

# The core install alone (no extras), from the built wheel in a throwaway virtualenv (~6.5 GB, removed after):
# train, evaluate, predict on real Fashion-MNIST; commands that need an extra name it. About 3-5 minutes.
check-core: data
	PYTHON=$(PYTHON) BUILD_PYTHON=$(BIN)/python DATA_ROOT=$(DATA_ROOT) bash .ci/check-core

# The Fashion-MNIST benchmark (docs/results.md): the preset plans itself to its budget on this machine, then the
# test evaluation with flip test-time augmentation and the report; about 30 minutes in all on 2 cores.
# SEED=1 for another seed; PRESET=fashion-mnist-15min for the 15-minute preset.
SEED ?= 0
PRESET ?= fashion-mnist
BENCH_RUN := runs/$(PRESET)-seed$(SEED)
benchmark-fashion-mnist: data
	@started=$$(date +%s); \
	$(BIN)/googlenet train --config configs/$(PRESET).toml --set train.seed=$(SEED) --out $(BENCH_RUN) && \
	$(BIN)/googlenet evaluate $(BENCH_RUN)/checkpoints/best.pt --split test --tta flip --backend torch --precision bf16 && \
	echo "wall-clock, training to test evaluation: $$(( $$(date +%s) - started )) s" | tee $(BENCH_RUN)/wallclock.txt && \
	$(BIN)/googlenet report $(BENCH_RUN)

# The peer on the same machine: torchvision's googlenet trained the obvious way (bench/peer_torchvision.py).
benchmark-peer: data
	$(BIN)/python bench/peer_torchvision.py --data $(DATA_ROOT) --seed $(SEED) --json runs/peer-seed$(SEED).json

# Time to accuracy at equal wall-clock (docs/results.md): the preset and the peer each given 5, 10, 15 and 30
# minutes, start to test result (about 2 hours on 2 cores); the picture is docs/images/time-to-accuracy.png.
# An interrupted curve goes on where it stopped (rows kept in runs/curve-seed$(SEED).json).
BUDGETS ?= 5 10 15 30
benchmark-curve: data
	$(BIN)/python bench/curve.py --budgets $(BUDGETS) --seed $(SEED) --data $(DATA_ROOT) \
		--json runs/curve-seed$(SEED).json --plot docs/images/time-to-accuracy.png

# On a GPU: the preset on CUDA in a GPU_MINUTES budget (the planner fits its schedule to the card), then
# torchvision's googlenet, the obvious loop, on the same card (docs/results.md, "On a GPU").
GPU_MINUTES ?= 3
GPU_RUN := runs/cuda-$(PRESET)-seed$(SEED)
benchmark-cuda: data
	@started=$$(date +%s); \
	$(BIN)/googlenet train --config configs/$(PRESET).toml --set train.seed=$(SEED) --set train.device=cuda \
		--set train.max_minutes=$(GPU_MINUTES) --out $(GPU_RUN) && \
	$(BIN)/googlenet evaluate $(GPU_RUN)/checkpoints/best.pt --split test --tta flip --backend torch --precision bf16 && \
	echo "wall-clock, training to test evaluation: $$(( $$(date +%s) - started )) s" | tee $(GPU_RUN)/wallclock.txt
	$(BIN)/python bench/peer_torchvision.py --data $(DATA_ROOT) --seed $(SEED) --device cuda --json runs/peer-cuda-seed$(SEED).json

# The server under load (README, docs/guide.md): 1,000 requests from 16 clients, with and without dynamic batching.
SERVE_CKPT ?= runs/$(PRESET)-seed$(SEED)/checkpoints/best.pt
SERVE_IMAGE ?= ../shared/data/imagenet-sample/ILSVRC2012_test_00000001.JPEG
benchmark-serve: setup
	$(BIN)/python -m googlenet.serve.loadtest $(SERVE_CKPT) $(SERVE_IMAGE) --requests 1000 --concurrency 16

# The same server as Ray Serve replicas against one process, at 16 and 64 concurrent clients (docs/performance.md).
REPLICAS ?= 2
benchmark-serve-ray: setup
	$(BIN)/python -m googlenet.serve.loadtest $(SERVE_CKPT) $(SERVE_IMAGE) --requests 1000 --concurrency 16 64 \
		--ray $(REPLICAS) --json runs/serve-ray.json

# The performance tables (docs/performance.md) (about 12 minutes on 2 cores): every engine against torchvision, ONNX Runtime
# and OpenVINO in one run, and each engine's agreement on the Fashion-MNIST test set when that run exists.
benchmark-speed: data
	$(BIN)/googlenet benchmark --compile --json runs/benchmark.json \
		$$(test -f runs/fashion-mnist/checkpoints/best.pt && echo --checkpoint runs/fashion-mnist/checkpoints/best.pt)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
