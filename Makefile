# The two commands: `make demo` (the whole pipeline on the embedded default) and `make test`.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := runs/demo
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: all setup data test demo bench clean

all: test

# torch and torchvision come from the ranges in pyproject.toml; pip resolves a pair that imports together
# (torchvision wheels pin their torch). The import check below fails the setup loudly if they do not.
$(BIN)/hsconas: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,slim,openvino,executorch]'
	$(BIN)/python -c "import torch, torchvision, onnxruntime, openvino, executorch.runtime; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'onnxruntime', onnxruntime.__version__, 'openvino', openvino.__version__)"
	@touch $@

setup: $(BIN)/hsconas data

# Fashion-MNIST from Debian's package where apt is available (as root, or through sudo without a password).
data:
	@if [ -f $(FMNIST) ] || [ -n "$$HSCONAS_DATA" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
	  || echo "could not install dataset-fashion-mnist; hsconas will try torchvision's download"; \
	else echo "no apt: hsconas will look in HSCONAS_DATA or use torchvision's download"; fi

test: setup
	$(BIN)/python -m pytest -q

# The whole pipeline on the embedded default: this machine's CPU, Fashion-MNIST, layout A, sized for a
# 2-core machine (at most 20 minutes). Rerunning resumes; `rm -rf runs/demo` starts over.
demo: setup
	$(BIN)/hsconas run --device cpu --data fashion-mnist --space fmnist-A --latency 40% --preset demo --out $(DEMO)

# Every benchmark of docs/BENCHMARKS.md (long: several hours on 2 cores, most of it training networks from scratch).
bench: setup
	$(BIN)/python bench/predictor.py --device cpu --space fmnist-A
	$(BIN)/python bench/predictor.py --device cpu --space imagenet-A
	$(BIN)/python bench/train_speed.py --space fmnist-A --batch-size 64
	$(BIN)/python bench/supernet_recipes.py --recipe shipped --steps 1658
	$(BIN)/python bench/ranking.py --train-supernet demo --train-supernet e10 --test-reference tests/data/ranking_reference.json
	$(BIN)/python bench/train_quality.py
	$(BIN)/python bench/evaluator.py
	$(BIN)/python bench/shrink.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/closed_loop.py
	$(BIN)/python bench/verdict.py --device cpu --space fmnist-A
	$(BIN)/python bench/baselines.py
	if test -f runs/demo/hsconet/checkpoint.pt; then $(BIN)/python bench/precision.py --checkpoint runs/demo/hsconet/checkpoint.pt --result runs/demo/search/result.json; else echo 'bench/precision.py needs make demo first'; fi
	$(MAKE) demo
	$(BIN)/python bench/shrink_samples.py --run $(DEMO)
	$(BIN)/python bench/search_value.py --run $(DEMO)
	$(BIN)/python bench/beta_below.py --run $(DEMO)

clean:
	rm -rf $(VENV) runs .pytest_cache
