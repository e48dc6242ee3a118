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
	$(BIN)/python -m pip install -q -e '.[test,slim]'
	$(BIN)/python -c "import torch, torchvision, onnxruntime; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'onnxruntime', onnxruntime.__version__)"
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

# The demo's own profiles go under runs/demo/profiles (presets still come from device_profiles/).
demo: export HSCONAS_PROFILES = $(CURDIR)/$(DEMO)/profiles
demo: setup
	@mkdir -p $(DEMO)
	$(BIN)/hsconas space --space fmnist-A
	$(BIN)/hsconas sample --space fmnist-A --seed 0 --out $(DEMO)/sampled-arch.json
	$(BIN)/hsconas arch show $(DEMO)/sampled-arch.json
	$(BIN)/hsconas calibrate --device cpu --space fmnist-A
	$(BIN)/hsconas predict --arch $(DEMO)/sampled-arch.json --device cpu
	$(BIN)/hsconas measure --arch $(DEMO)/sampled-arch.json --device cpu
	@if [ -f $(DEMO)/supernet/checkpoint.pt ]; then R=--resume; fi; \
	$(BIN)/hsconas train --data fashion-mnist --space fmnist-A --epochs 2 --limit 40000 --out $(DEMO)/supernet $$R

clean:
	rm -rf $(VENV) runs .pytest_cache
