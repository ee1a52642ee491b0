# Two commands do all the set-up: `make demo` and `make test`.
# Both create .venv, install torch first (CPU build without a GPU, CUDA build with one),
# then medsynth itself, so pip never resolves a bare `torch` to the CUDA wheels on a CPU box.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
BIN := $(VENV)/bin
STAMP := $(VENV)/.medsynth-installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "medsynth: need Python 3.11+ as $(PYTHON) on PATH (set PYTHON=...)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "GPU found: installing the CUDA build of torch"; \
	  $(BIN)/pip install "torch>=2.4,<3"; \
	else \
	  echo "no GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
	  if $(BIN)/pip install --no-deps --no-index "torch==$(TORCH_VERSION)" 2>/dev/null; then \
	    $(BIN)/pip install "torch==$(TORCH_VERSION)"; \
	  else \
	    $(BIN)/pip install "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple; \
	  fi; \
	fi
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medsynth demo --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff (lint and format) and mypy, configured in pyproject.toml; .ci/run runs this before the tests.
lint: $(STAMP)
	$(BIN)/ruff check medsynth tests benchmarks
	$(BIN)/ruff format --check medsynth tests benchmarks
	$(BIN)/mypy medsynth

clean:
	rm -rf $(VENV) demo-output
