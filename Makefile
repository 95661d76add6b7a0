# Set-up is part of every target: a fresh clone needs only `make train` or `make test`.
# On a machine with an NVIDIA GPU (nvidia-smi lists one, or GPU=1 is given) the install adds JAX's
# CUDA wheels, for the CUDA major version the driver reports (CUDA=12 or CUDA=13 to choose; 13,
# which PyTorch's default wheels also use, when the driver does not say). GPU=0 forces the CPU install.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
NVIDIA_SMI ?= nvidia-smi
GPU ?= $(shell $(NVIDIA_SMI) -L 2>/dev/null | grep -q '^GPU' && echo 1 || echo 0)
CUDA ?= $(shell $(NVIDIA_SMI) 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' | head -n 1)
JAX_CUDA := cuda$(if $(filter 12,$(CUDA)),12,13)
comma := ,
EXTRAS := dev$(if $(filter 1,$(GPU)),$(comma)$(JAX_CUDA))
# One stamp per flavour: a GPU appearing (or GPU=0) reinstalls with the other extras.
STAMP := $(VENV)/.installed-$(if $(filter 1,$(GPU)),$(JAX_CUDA),cpu)
ifeq ($(GPU),1)
# JAX would take 75 % of the GPU's memory in each pytest worker, and from torch in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE ?= false
endif

.PHONY: install test train

# pip installs without byte-compiling, and compileall then compiles on every core (pip compiles on
# one, half of the install's time). A few packages ship files that are not Python 3 (templates,
# test data); pip skips those silently, and so does `|| true`.
$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet --no-compile -e '.[$(EXTRAS)]'
	$(PYTHON) -m compileall -qq -j 0 "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PYTHON) -m pytest parity_tests -n 2 --dist loadgroup --durations=20

train: $(STAMP)
	$(PYTHON) scripts/train.py
