# The README's commands. `make demo` and `make test` each do the whole set-up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_ROOT ?= data
DEMO_OUT ?= runs/demo

.PHONY: setup data demo test lint typecheck unit check-core benchmark-fashion-mnist benchmark-speed clean

setup: $(STAMP)

# pyproject.toml gives ranges; constraints.txt pins every version set-up installs (torch and torchvision among
# them: pip takes those from the local disk where they lie). The dev environment has every extra.
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

# About 13 minutes on 2 CPU cores: train on real Fashion-MNIST, evaluate on the official test set, report.
demo: data
	rm -rf $(DEMO_OUT)
	$(BIN)/googlenet train --config configs/fashion-mnist-demo.toml --out $(DEMO_OUT)
	$(BIN)/googlenet evaluate $(DEMO_OUT)/checkpoints/best.pt --split test
	$(BIN)/googlenet report $(DEMO_OUT)

lint: setup
	$(BIN)/ruff check src tests hubconf.py
	$(BIN)/ruff format --check src tests hubconf.py

typecheck: setup
	$(BIN)/mypy

unit: data
	$(BIN)/python -m pytest

test: lint typecheck unit

# The core install alone (no extras), from the built wheel in a throwaway virtualenv (~6.5 GB, removed after):
# train, evaluate, predict on real Fashion-MNIST; commands that need an extra name it. About 3-5 minutes.
check-core: data
	PYTHON=$(PYTHON) BUILD_PYTHON=$(BIN)/python DATA_ROOT=$(DATA_ROOT) bash .ci/check-core

# The Fashion-MNIST benchmark (docs/results.md): the full preset (about 27 minutes on 2 cores) with its test evaluation.
benchmark-fashion-mnist: data
	$(BIN)/googlenet train --config configs/fashion-mnist.toml --out runs/fashion-mnist
	$(BIN)/googlenet evaluate runs/fashion-mnist/checkpoints/best.pt --split test
	$(BIN)/googlenet report runs/fashion-mnist

# The performance tables (docs/performance.md) (about 12 minutes on 2 cores): every engine against torchvision, ONNX Runtime
# and OpenVINO in one run, and each engine's agreement on the Fashion-MNIST test set when that run exists.
benchmark-speed: data
	$(BIN)/googlenet benchmark --compile --json runs/benchmark.json \
		$$(test -f runs/fashion-mnist/checkpoints/best.pt && echo --checkpoint runs/fashion-mnist/checkpoints/best.pt)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
